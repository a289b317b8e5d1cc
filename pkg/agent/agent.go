// Package agent is storepkg's node agent, the long-running process of the
// DaemonSet: it collects the node store's garbage when its filesystem
// fills up (high and low thresholds and a minimum age, like kubelet's
// image garbage collection), turns the shims' fetch records
// (pkg/fetchrecord) into Prometheus metrics and pod events, keeps the
// node's peers file in step with the other nodes' agents, and answers
// health probes.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
)

// Config configures an Agent. Zero durations and thresholds take the
// defaults below.
type Config struct {
	// StoreRoot is the root of the node store (the store is
	// <StoreRoot>/nix/store); default "/".
	StoreRoot string
	// StatusDir is where the shims write fetch records; default
	// fetchrecord.DefaultDir.
	StatusDir string
	// ListenAddress serves /metrics and /healthz (e.g. ":9477",
	// "127.0.0.1:0"); empty serves nothing.
	ListenAddress string

	// Interval is how often the store's filesystem usage is checked;
	// default 1m.
	Interval time.Duration
	// HighPercent: when the filesystem's usage reaches it, a collection
	// runs and frees what brings usage down to LowPercent. Defaults 85
	// and 80; 0 <= LowPercent < HighPercent <= 100.
	HighPercent, LowPercent float64
	// MinAge keeps paths registered more recently than this, with their
	// closures, whatever the usage; default 10m. Negative: no minimum.
	MinAge time.Duration

	// PollInterval is how often the status directory is read; default 1s.
	PollInterval time.Duration
	// SlowFetchAfter: a fetch running this long gets a StorepkgFetching
	// event (and one StorepkgFetched when it ends); default 5s.
	SlowFetchAfter time.Duration
	// EventUpdateInterval is how often a slow fetch's event is updated
	// with its progress; default 15s.
	EventUpdateInterval time.Duration
	// StaleAfter expires a running fetch's record that was not updated
	// for this long when the writer's liveness cannot be checked by PID
	// (another PID namespace); default 1m.
	StaleAfter time.Duration

	// PeerListen serves the node's store to the other nodes as a binary
	// cache (pkg/peer) on this address, a listener of its own apart from
	// the metrics; empty, or no PeerToken: not served.
	PeerListen string
	// PeerToken is the bearer token peers must send.
	PeerToken string
	// NodeName is this node's name among its peers.
	NodeName string
	// Peers returns the current peer list (pkg/peer.ServerConfig.Peers);
	// nil: any client with the token is served.
	Peers func() []peer.Peer
	// PeerCoordinator, if set, is served under /storepkg/v1/ on the peer
	// listener. Nil with Peers and NodeName set: the agent serves its own
	// (pkg/peer.NewCoordinator over its store), so that the fetches of
	// its peers can claim paths here.
	PeerCoordinator http.Handler
	// PeerCompression is how NARs are served: pkg/peer.CompressionNone
	// (default) or CompressionZstd.
	PeerCompression string
	// Discovery, if set, lists the other nodes' agents through the API
	// server and writes the peers file the fetch children read.
	Discovery *PeersConfig

	// Events receives pod events; nil posts none.
	Events EventSink
	// Log is the agent's logger; nil means logrus's standard logger.
	Log *logrus.Entry
	// OnGC, if set, is called after each periodic usage check (tests).
	OnGC func(GCRun)
}

// Defaults.
const (
	DefaultInterval            = time.Minute
	DefaultHighPercent         = 85
	DefaultLowPercent          = 80
	DefaultMinAge              = 10 * time.Minute
	DefaultPollInterval        = time.Second
	DefaultSlowFetchAfter      = 5 * time.Second
	DefaultEventUpdateInterval = 15 * time.Second
	DefaultStaleAfter          = time.Minute
)

func (c *Config) setDefaults() error {
	if c.StoreRoot == "" {
		c.StoreRoot = "/"
	}
	if c.StatusDir == "" {
		c.StatusDir = fetchrecord.DefaultDir
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.HighPercent == 0 && c.LowPercent == 0 {
		c.HighPercent, c.LowPercent = DefaultHighPercent, DefaultLowPercent
	}
	if c.HighPercent <= 0 || c.HighPercent > 100 || c.LowPercent < 0 || c.LowPercent >= c.HighPercent {
		return fmt.Errorf("agent: thresholds high %v%% and low %v%%: want 0 <= low < high <= 100", c.HighPercent, c.LowPercent)
	}
	if c.MinAge == 0 {
		c.MinAge = DefaultMinAge
	} else if c.MinAge < 0 {
		c.MinAge = 0
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.SlowFetchAfter <= 0 {
		c.SlowFetchAfter = DefaultSlowFetchAfter
	}
	if c.EventUpdateInterval <= 0 {
		c.EventUpdateInterval = DefaultEventUpdateInterval
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = DefaultStaleAfter
	}
	if c.Log == nil {
		c.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return nil
}

// Agent is a running node agent.
type Agent struct {
	cfg     Config
	log     *logrus.Entry
	store   *store.Store
	metrics *metrics
	records *recordWatcher
	events  chan PodEvent
	peers   *discovery // nil: no discovery

	listener net.Listener
	server   *http.Server
	peerL    net.Listener
	wg       sync.WaitGroup
	started  bool

	mu       sync.Mutex
	lastPoll time.Time
	lastGC   GCRun
	gcBusy   bool

	// invalidOwners: the owner records the last sweep found invalid,
	// each logged once (gcLoop's goroutine only).
	invalidOwners map[string]bool
}

// New opens the node store and prepares the agent; Start runs it.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, cfg.StoreRoot)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, store: st, metrics: newMetrics(st), events: make(chan PodEvent, 256)}
	a.records = newRecordWatcher(a)
	if cfg.Discovery != nil {
		if a.peers, err = newDiscovery(*cfg.Discovery, cfg.Log, a.metrics.peers); err != nil {
			st.Close()
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	return a, nil
}

// Start binds the listen address and starts the agent's loops; they stop
// when ctx ends (then Wait returns).
func (a *Agent) Start(ctx context.Context) error {
	if a.started {
		return errors.New("agent: already started")
	}
	a.started = true
	if a.cfg.ListenAddress != "" {
		l, err := net.Listen("tcp", a.cfg.ListenAddress)
		if err != nil {
			return fmt.Errorf("agent: listening on %s: %w", a.cfg.ListenAddress, err)
		}
		a.listener = l
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{ErrorLog: a.log, ErrorHandling: promhttp.ContinueOnError}))
		mux.HandleFunc("/healthz", a.healthz)
		mux.HandleFunc("/readyz", a.healthz)
		a.server = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := a.server.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.WithError(err).Error("metrics server stopped")
			}
		}()
	}
	if err := a.startPeerServer(ctx); err != nil {
		if a.listener != nil {
			a.server.Close()
			a.wg.Wait()
		}
		return err
	}
	a.log.WithFields(logrus.Fields{
		"root": a.cfg.StoreRoot, "statusDir": a.cfg.StatusDir, "listen": a.Addr(), "peerListen": a.PeerAddr(),
		"interval": a.cfg.Interval.String(), "highPercent": a.cfg.HighPercent, "lowPercent": a.cfg.LowPercent,
		"minAge": a.cfg.MinAge.String(), "events": a.cfg.Events != nil, "peers": a.peers != nil,
	}).Info("storepkg agent started")

	if a.peers != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.peers.run(ctx) }()
	}

	a.wg.Add(3)
	go func() { defer a.wg.Done(); a.gcLoop(ctx) }()
	go func() { defer a.wg.Done(); a.recordLoop(ctx) }()
	go func() { defer a.wg.Done(); a.eventLoop(ctx) }()
	go func() {
		<-ctx.Done()
		if a.server != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a.server.Shutdown(sctx)
		}
	}()
	return nil
}

// Wait waits for the loops to stop (after Start's context ended) and
// closes the store.
func (a *Agent) Wait() error {
	a.wg.Wait()
	err := a.store.Close()
	a.log.Info("storepkg agent stopped")
	return err
}

// Run is Start, then Wait.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		a.store.Close()
		return err
	}
	return a.Wait()
}

// Peers returns the peers the last discovery listed, this node among
// them (nil without discovery, or before the first listing).
func (a *Agent) Peers() []peer.Peer {
	if a.peers == nil {
		return nil
	}
	return a.peers.Peers()
}

// PeerClientAllowed reports whether a request to the peer listener from
// addr can come from a listed peer's fetch (see discovery.ClientAllowed).
// Without discovery there is no list to check against: true.
func (a *Agent) PeerClientAllowed(addr netip.Addr) bool {
	if a.peers == nil {
		return true
	}
	return a.peers.ClientAllowed(addr)
}

// Addr is the address the metrics server listens on ("" if none).
func (a *Agent) Addr() string {
	if a.listener == nil {
		return ""
	}
	return a.listener.Addr().String()
}

func (a *Agent) recordLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.PollInterval)
	defer t.Stop()
	for {
		now := time.Now()
		a.records.poll(ctx, now)
		a.mu.Lock()
		a.lastPoll = now
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// healthz answers the DaemonSet's probes: healthy while the status
// loop keeps polling (a collection may take long and is not waited for).
func (a *Agent) healthz(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	lastPoll, lastGC, busy := a.lastPoll, a.lastGC, a.gcBusy
	a.mu.Unlock()
	body := map[string]any{"status": "ok", "lastStatusPoll": lastPoll, "gcRunning": busy}
	if !lastGC.Time.IsZero() {
		body["lastUsageCheck"] = lastGC.Time
		body["usagePercent"] = lastGC.UsagePercent
		if lastGC.Err != nil {
			body["lastGCError"] = lastGC.Err.Error()
		}
	}
	code := http.StatusOK
	if lastPoll.IsZero() || time.Since(lastPoll) > 10*a.cfg.PollInterval+30*time.Second {
		body["status"] = "status directory not polled recently"
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}
