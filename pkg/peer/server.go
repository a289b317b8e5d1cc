package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/nar"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/nixbase32"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// CoordinatorPrefix is where ServerConfig.Coordinator is mounted.
const CoordinatorPrefix = "/storepkg/v1/"

// Compressions ServerConfig.Compression takes.
const (
	CompressionNone = "none"
	CompressionZstd = "zstd"
)

const (
	// defaultWaitPoll is how often the paths waited for are looked up.
	defaultWaitPoll = 250 * time.Millisecond
)

// ServerConfig configures NewServer.
type ServerConfig struct {
	// Store is the node's store, served read-only.
	Store *store.Store
	// Token is the bearer token every request must carry (required).
	Token string
	// Self is this node's name, in the server's log lines.
	Self string
	// Peers returns the current peer list. When it is not empty, only
	// clients at a listed peer's host (or this machine's own addresses)
	// are served; others get 403. Nil or an empty list: any client with
	// the token.
	Peers func() []Peer
	// Allowed, if set, decides instead of Peers' hosts which client
	// addresses may be a listed peer's fetch (the agent's discovery knows
	// each peer's node and pod addresses); this machine's own addresses
	// are always let in.
	Allowed func(netip.Addr) bool
	// Coordinator, if set, serves the routes under /storepkg/v1/.
	Coordinator http.Handler
	// Compression of the NARs served: CompressionNone (default) or
	// CompressionZstd, compressed on the fly (docs/peers.md: measured).
	Compression string
	// WaitPoll is how often the store is asked for the paths narinfo
	// requests wait for (one query for all of them); default 250ms.
	WaitPoll time.Duration
	// Log is the server's logger; nil means logrus's standard logger.
	Log *logrus.Entry
}

// Server serves a node's store to its peers as a Nix binary cache:
// nix-cache-info, a narinfo for each valid path that has signatures (the
// upstream caches' ones, which Nix keeps in the database), and the NARs,
// serialised from the store's unpacked paths as they are requested.
type Server struct {
	cfg     ServerConfig
	log     *logrus.Entry
	handler http.Handler
	localIP func() map[string]bool

	mu      sync.Mutex
	waiting map[string]*waitEntry // hash part -> its waiters
	polling bool
	polls   atomic.Int64 // lookups by pollWaiting (tests)
}

type waitEntry struct {
	ready chan struct{} // closed when the path became valid
	n     int
}

// NewServer checks cfg and returns the server; Handler serves it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("peer: server: no store")
	}
	if cfg.Token == "" {
		return nil, errors.New("peer: server: no token: the store would be open to anyone who can reach the port")
	}
	switch cfg.Compression {
	case "":
		cfg.Compression = CompressionNone
	case CompressionNone, CompressionZstd:
	default:
		return nil, fmt.Errorf("peer: server: compression %q: want %q or %q", cfg.Compression, CompressionNone, CompressionZstd)
	}
	if cfg.WaitPoll <= 0 {
		cfg.WaitPoll = defaultWaitPoll
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.Self != "" {
		cfg.Log = cfg.Log.WithField("node", cfg.Self)
	}
	s := &Server{cfg: cfg, log: cfg.Log, waiting: map[string]*waitEntry{}, localIP: cachedLocalAddrs()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /nix-cache-info", s.cacheInfo)
	mux.HandleFunc("GET /{file}", s.narinfo)
	mux.HandleFunc("GET /nar/{file}", s.nar)
	if cfg.Coordinator != nil {
		mux.Handle(CoordinatorPrefix, cfg.Coordinator)
	}
	s.handler = s.guard(mux)
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// guard lets through requests with the token from allowed addresses.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !CheckToken(r, s.cfg.Token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="storepkg peers"`)
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		if !s.allowed(r.RemoteAddr) {
			s.log.WithField("client", r.RemoteAddr).Warn("peer server: refusing a client that is not a listed peer")
			http.Error(w, "not a peer of this node", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allowed: the peer list is empty or unknown, or the client is at one
// of its hosts, or on this machine (a node's own fetches).
func (s *Server) allowed(remote string) bool {
	if s.cfg.Peers == nil {
		return true
	}
	peers := s.cfg.Peers()
	if len(peers) == 0 {
		return true
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() || s.localIP()[ip.String()] {
		return true
	}
	if s.cfg.Allowed != nil {
		addr, ok := netip.AddrFromSlice(ip)
		return ok && s.cfg.Allowed(addr.Unmap())
	}
	for _, p := range peers {
		u, err := url.Parse(p.URL)
		if err != nil {
			continue
		}
		if pip := net.ParseIP(u.Hostname()); pip != nil && pip.Equal(ip) {
			return true
		}
	}
	return false
}

// cachedLocalAddrs returns this machine's interface addresses, looked up
// at most once a minute.
func cachedLocalAddrs() func() map[string]bool {
	var (
		mu   sync.Mutex
		at   time.Time
		addr map[string]bool
	)
	return func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < time.Minute && addr != nil {
			return addr
		}
		addr = map[string]bool{}
		at = time.Now()
		as, _ := net.InterfaceAddrs()
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok {
				addr[n.IP.String()] = true
			}
		}
		return addr
	}
}

func (s *Server) cacheInfo(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	io.WriteString(w, "StoreDir: "+storepath.StoreDir+"\nWantMassQuery: 1\nPriority: 10\n")
}

// validHash: a 32-character hash part in Nix's base32.
func validHash(h string) bool {
	if len(h) != storepath.HashLen {
		return false
	}
	for i := 0; i < len(h); i++ {
		if !nixbase32.IsValidChar(h[i]) {
			return false
		}
	}
	return true
}

func (s *Server) narinfo(w http.ResponseWriter, r *http.Request) {
	hash, ok := strings.CutSuffix(r.PathValue("file"), ".narinfo")
	if !ok || !validHash(hash) {
		http.NotFound(w, r)
		return
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		secs, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			http.Error(w, fmt.Sprintf("query parameter wait=%q: want whole seconds", v), http.StatusBadRequest)
			return
		}
		wait = min(time.Duration(secs)*time.Second, MaxWait)
	}
	ctx := r.Context()
	p, err := s.lookup(ctx, hash)
	if err == nil && p == "" && wait > 0 {
		p, err = s.waitFor(ctx, hash, wait)
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if p == "" {
		http.Error(w, hash+": no such valid path", http.StatusNotFound)
		return
	}
	info, err := s.cfg.Store.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotValid) {
		http.Error(w, p.Absolute()+": no longer valid", http.StatusNotFound)
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if len(info.Sigs) == 0 {
		// Peers verify signatures: without them the path is no use.
		http.Error(w, p.Absolute()+": has no signatures", http.StatusNotFound)
		return
	}
	if info.NarSize == 0 {
		http.Error(w, p.Absolute()+": NAR size unknown", http.StatusNotFound)
		return
	}
	ni := &narinfo.NarInfo{
		StorePath:   p,
		URL:         "nar/" + hash + "-" + nixbase32.EncodeToString(info.NarHash[:]) + ".nar",
		Compression: s.cfg.Compression,
		NarHash:     narinfo.Hash(info.NarHash),
		NarSize:     info.NarSize,
		References:  info.References,
		Deriver:     info.Deriver,
		Sigs:        info.Sigs,
		CA:          info.CA,
	}
	if s.cfg.Compression == CompressionZstd {
		ni.URL += ".zst"
	}
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	io.WriteString(w, ni.String())
}

// lookup returns the valid path of hash, or "".
func (s *Server) lookup(ctx context.Context, hash string) (storepath.Path, error) {
	m, err := s.cfg.Store.ValidPathsByHashPart(ctx, []string{hash})
	return m[hash], err
}

// waitFor waits up to d for a path of hash to become valid; "" if none
// did. All waiters share one poll of the store (pollWaiting).
func (s *Server) waitFor(ctx context.Context, hash string, d time.Duration) (storepath.Path, error) {
	s.mu.Lock()
	e := s.waiting[hash]
	if e == nil {
		e = &waitEntry{ready: make(chan struct{})}
		s.waiting[hash] = e
	}
	e.n++
	if !s.polling {
		s.polling = true
		go s.pollWaiting()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if e.n--; e.n == 0 && s.waiting[hash] == e {
			delete(s.waiting, hash)
		}
		s.mu.Unlock()
	}()
	// Looked up again once registered: the poll may have been the
	// first to see it, and this request checks it (signatures, …) itself.
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-e.ready:
		return s.lookup(ctx, hash)
	case <-t.C:
		// One last look: a path registered since the last poll counts.
		return s.lookup(ctx, hash)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// pollWaiting looks up every waited-for hash with one query each
// WaitPoll, wakes the waiters of those that became valid, and stops
// when no one waits.
func (s *Server) pollWaiting() {
	t := time.NewTicker(s.cfg.WaitPoll)
	defer t.Stop()
	for range t.C {
		s.mu.Lock()
		if len(s.waiting) == 0 {
			s.polling = false
			s.mu.Unlock()
			return
		}
		hashes := make([]string, 0, len(s.waiting))
		for h := range s.waiting {
			hashes = append(hashes, h)
		}
		s.mu.Unlock()

		s.polls.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		found, err := s.cfg.Store.ValidPathsByHashPart(ctx, hashes)
		cancel()
		if err != nil {
			s.log.WithError(err).Warn("peer server: looking up the paths requests wait for")
			continue
		}
		s.mu.Lock()
		for h := range found {
			if e := s.waiting[h]; e != nil {
				close(e.ready)
				delete(s.waiting, h)
			}
		}
		s.mu.Unlock()
	}
}

// nar streams /nar/<hash>-<narhash>.nar[.zst], serialised from the
// store path while it is held as a temporary GC root.
func (s *Server) nar(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	name, zst := strings.CutSuffix(file, ".nar.zst")
	if !zst {
		var ok bool
		if name, ok = strings.CutSuffix(file, ".nar"); !ok {
			http.NotFound(w, r)
			return
		}
	}
	hash, narHash, ok := strings.Cut(name, "-")
	if !ok || !validHash(hash) || len(narHash) != nixbase32.EncodedLen(32) {
		http.NotFound(w, r)
		return
	}
	ctx := r.Context()
	p, err := s.lookup(ctx, hash)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if p == "" {
		http.Error(w, hash+": no such valid path", http.StatusNotFound)
		return
	}
	// Root first, then check: once a root, the path stays as it is now.
	release, err := s.cfg.Store.HoldTempRoots(ctx, p)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	defer release()
	info, err := s.cfg.Store.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotValid) {
		http.Error(w, p.Absolute()+": no longer valid", http.StatusNotFound)
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if got := nixbase32.EncodeToString(info.NarHash[:]); got != narHash {
		// The path was replaced since the narinfo was served.
		http.Error(w, fmt.Sprintf("%s: NAR hash is sha256:%s, not sha256:%s", p.Absolute(), got, narHash), http.StatusNotFound)
		return
	}

	log := s.log.WithFields(logrus.Fields{"path": p.Absolute(), "client": r.RemoteAddr})
	if zst {
		w.Header().Set("Content-Type", "application/zstd")
	} else {
		w.Header().Set("Content-Type", "application/x-nix-nar")
		if info.NarSize > 0 {
			w.Header().Set("Content-Length", strconv.FormatUint(info.NarSize, 10))
		}
	}
	if r.Method == http.MethodHead {
		return
	}
	start := time.Now()
	var n int64
	if zst {
		n, err = writeZstd(ctx, w, s.cfg.Store.RealPath(p))
	} else {
		n, err = nar.WriteTree(ctx, w, s.cfg.Store.RealPath(p))
	}
	if err == nil && info.NarSize > 0 && uint64(n) != info.NarSize {
		err = fmt.Errorf("wrote %d bytes, NarSize is %d", n, info.NarSize)
	}
	if err != nil {
		// Cut the connection: the client must see a broken download,
		// never a clean end of a wrong one.
		if ctx.Err() == nil {
			log.WithError(err).Warn("peer server: streaming a NAR failed")
		}
		panic(http.ErrAbortHandler)
	}
	log.WithFields(logrus.Fields{"narBytes": n, "duration": time.Since(start).Round(time.Millisecond).String()}).Debug("peer server: served a NAR")
}

// encoders keeps zstd encoders for reuse: each holds its window buffers.
var encoders = sync.Pool{New: func() any {
	e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	return e
}}

// writeZstd streams the NAR of path compressed; it returns the NAR's
// (uncompressed) size.
func writeZstd(ctx context.Context, w io.Writer, path string) (int64, error) {
	enc := encoders.Get().(*zstd.Encoder)
	defer encoders.Put(enc)
	enc.Reset(w)
	n, err := nar.WriteTree(ctx, enc, path)
	if err != nil {
		enc.Reset(nil)
		return n, err
	}
	return n, enc.Close()
}

func (s *Server) serverError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left
	}
	s.log.WithError(err).WithField("url", r.URL.Path).Error("peer server")
	http.Error(w, "internal error (see the agent's log)", http.StatusInternalServerError)
}
