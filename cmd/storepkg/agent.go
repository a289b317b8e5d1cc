package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/storepkg/storepkg/pkg/agent"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/peer"
)

// DefaultAgentListen is where `storepkg agent` serves /metrics and
// /healthz unless told otherwise.
const DefaultAgentListen = ":9477"

// DefaultPeerListen is where `storepkg agent` serves the store to its
// peers, when it has a token.
var DefaultPeerListen = ":" + strconv.Itoa(agent.DefaultPeerPort)

func newAgentCommand() *cobra.Command {
	var (
		cfg        agent.Config
		minAge     string
		nodeName   string
		kubeEvents string
		logFormat  string
		logLevel   string
		peers      peerFlags
		peerStatic string
	)
	cmd := &cobra.Command{
		Use:   "agent [flags]",
		Short: "Run the node agent: disk-driven garbage collection, metrics, pod events",
		Long: `agent is the long-running process of storepkg's DaemonSet.

Every --interval it measures the filesystem that holds <root>/nix/store.
When its usage reaches --gc-high-percent it collects garbage, as
'storepkg gc' does, until usage is back at --gc-low-percent, keeping paths
registered less than --gc-min-age ago (like kubelet's image garbage
collection).

With a peers' token (discovered, or --peer-token-file) it serves the
node's store to the other nodes as a Nix binary cache on --peer-listen,
to clients that send that token (docs/peers.md).
--peers-static names a peers file (the format the fetches read) giving
the agent its peer list, its node name and, without --peer-token-file,
its token, instead of discovery: for nodes outside a cluster's API, and
the peers benchmark. With a peer list the agent also coordinates its
peers' fetches.

It reads the fetch status records the shims write to --status-dir, and
serves Prometheus metrics at http://<listen-address>/metrics and a health
check at /healthz.

In a cluster (--node-name or $NODE_NAME set, and the in-cluster service
account available) it posts events on pods whose closure fetch is slow
(StorepkgFetching, StorepkgFetched) or fails (StorepkgFetchFailed). Its
service account needs create and patch on events.

Peer sharing (docs/peers.md): in a cluster it lists the other nodes'
agents (the pods matching --peer-pod-selector in --namespace, on nodes
labelled storepkg.dev/ready=true and matching --peer-node-selector) and
writes them, with this node's name and the peers' token, to --peers-file,
which the node's fetches read. The token comes from --peer-token-file, or
else from the Secret --peer-token-secret in --namespace, created with a
random token if missing. --peer-sharing=false turns sharing off and
removes the peers file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := agentLogger(logFormat, logLevel)
			if err != nil {
				return err
			}
			cfg.Log = log
			if minAge != "" {
				if cfg.MinAge, err = parseAge(minAge); err != nil {
					return fmt.Errorf("--gc-min-age: %w", err)
				}
				if cfg.MinAge == 0 {
					cfg.MinAge = -1 // explicitly none
				}
			}
			if nodeName == "" {
				nodeName = os.Getenv("NODE_NAME")
			}
			cfg.NodeName = nodeName
			if c := cfg.PeerCompression; c != peer.CompressionNone && c != peer.CompressionZstd {
				return fmt.Errorf("--peer-compression %q: want %s or %s", c, peer.CompressionNone, peer.CompressionZstd)
			}
			sink, err := kubeEventSink(kubeEvents, nodeName)
			if err != nil {
				return err
			}
			if sink != nil {
				cfg.Events = sink
				log.WithField("node", nodeName).Info("posting pod events through the API server")
			} else {
				log.Info("not posting pod events (no cluster)")
			}
			ctx := cmd.Context()
			if err := peers.apply(ctx, log, nodeName, peerStatic, &cfg); err != nil {
				return err
			}
			a, err := agent.New(ctx, cfg)
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StoreRoot, "root", "/", "root directory of the node store (the store is ROOT/nix/store)")
	f.StringVar(&cfg.StatusDir, "status-dir", fetchrecord.DefaultDir, "directory where the shims write fetch status records")
	f.StringVar(&cfg.ListenAddress, "listen-address", DefaultAgentListen, "`ADDRESS` to serve /metrics and /healthz on (empty: none)")
	f.StringVar(&cfg.PeerListen, "peer-listen", DefaultPeerListen, "`ADDRESS` to serve the store to peers on, with --peer-token-file (empty: none)")
	f.StringVar(&peerStatic, "peers-static", "", "`FILE`: a peers file giving this agent its peer list, node name and (without --peer-token-file) token, instead of discovery")
	f.StringVar(&cfg.PeerCompression, "peer-compression", peer.CompressionNone, "NARs served to peers: none, or zstd (compressed on the fly: only for links between nodes slower than a core compresses)")
	f.DurationVar(&cfg.Interval, "interval", agent.DefaultInterval, "how often to check the store filesystem's usage")
	f.Float64Var(&cfg.HighPercent, "gc-high-percent", agent.DefaultHighPercent, "collect garbage when the store filesystem's usage reaches this percentage")
	f.Float64Var(&cfg.LowPercent, "gc-low-percent", agent.DefaultLowPercent, "collect until usage is down to this percentage")
	f.StringVar(&minAge, "gc-min-age", agent.DefaultMinAge.String(), "keep paths registered less than `DURATION` ago (e.g. 10m, 2h, 1d)")
	f.DurationVar(&cfg.PollInterval, "status-poll", agent.DefaultPollInterval, "how often to read the status directory")
	f.DurationVar(&cfg.SlowFetchAfter, "slow-fetch-after", agent.DefaultSlowFetchAfter, "post a StorepkgFetching event on a pod whose fetch runs this long")
	f.DurationVar(&cfg.StaleAfter, "stale-after", agent.DefaultStaleAfter, "expire a running fetch's record not updated for this long (when the shim's PID cannot be checked)")
	f.StringVar(&nodeName, "node-name", "", "this node's name, for event sources (default $NODE_NAME)")
	f.StringVar(&kubeEvents, "kube-events", "auto", "post pod events: auto (when in a cluster with a node name), true or false")
	peers.register(cmd)
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}

// staticPeers sets the agent's peer list from the peers file at file.
// Unlike a fetch, the agent refuses a missing or bad file: it was named
// on purpose.
func staticPeers(cfg *agent.Config, file string) error {
	pf, err := peer.LoadFile(file)
	if err != nil {
		return fmt.Errorf("--peers-static: %w", err)
	}
	if pf == nil {
		return fmt.Errorf("--peers-static %s: no such file", file)
	}
	switch {
	case cfg.NodeName == "":
		cfg.NodeName = pf.Self
	case cfg.NodeName != pf.Self:
		return fmt.Errorf("--peers-static %s: self %q, but the node name is %q", file, pf.Self, cfg.NodeName)
	}
	if cfg.PeerToken == "" {
		cfg.PeerToken = pf.Token
	}
	peers := pf.Peers
	cfg.Peers = func() []peer.Peer { return peers }
	return nil
}

func agentLogger(format, level string) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	switch format {
	case "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if logrus.GetLevel() == logrus.DebugLevel { // --debug
		lv = logrus.DebugLevel
	}
	l.SetLevel(lv)
	return logrus.NewEntry(l).WithField("component", "storepkg-agent"), nil
}

// kubeEventSink returns the API server's event sink, or nil outside a
// cluster (auto) or when turned off.
func kubeEventSink(mode, node string) (agent.EventSink, error) {
	switch mode {
	case "false", "off":
		return nil, nil
	case "auto", "true", "on":
	default:
		return nil, fmt.Errorf("--kube-events %q: want auto, true or false", mode)
	}
	required := mode != "auto"
	if node == "" {
		if required {
			return nil, errors.New("--kube-events: no node name (--node-name or $NODE_NAME)")
		}
		return nil, nil
	}
	client, err := kubeClient("") // the pod's service account
	if err != nil {
		if required {
			return nil, fmt.Errorf("--kube-events: %w", err)
		}
		return nil, nil
	}
	return agent.NewKubeEvents(client, node), nil
}
