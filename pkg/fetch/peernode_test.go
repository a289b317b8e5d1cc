package fetch_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

const testPeerToken = "peer-test-token"

// peerNode is a test stand-in for a node's peer listener until the
// agent's peer cache server exists: the coordinator under test, and a
// real Nix binary cache of the node's store, exported path by path with
// `nix copy --to file://` once a path is valid there, served with the
// narinfo?wait= of the contract. The cache is Nix's own writing, so
// the narinfos carry the upstream signatures the store registered.
type peerNode struct {
	t    *testing.T
	name string
	root string // the node's store root
	st   *store.Store
	srv  *httptest.Server
	url  string

	cacheDir string
	// compression of the exported cache ("zstd"; "none" for tamper).
	compression string
	// tamper flips a byte of every NAR's file contents it serves.
	tamper bool

	narRequests atomic.Int64

	exportMu sync.Mutex // serialises exports
	mu       sync.Mutex
	exported map[string]bool // by hash part
}

// newPeerNodes makes one stand-in node per name, each with its own
// fresh store root; peers must be set (setPeers) before start.
func newPeerNodes(t *testing.T, names ...string) []*peerNode {
	t.Helper()
	var nodes []*peerNode
	for _, name := range names {
		n := &peerNode{t: t, name: name, root: t.TempDir(), cacheDir: filepath.Join(t.TempDir(), "cache"),
			compression: "zstd", exported: map[string]bool{}}
		st, err := store.Open(context.Background(), n.root)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		n.st = st
		nodes = append(nodes, n)
	}
	return nodes
}

// peerList is the peers file's list for nodes.
func peerList(nodes []*peerNode) []peer.Peer {
	var ps []peer.Peer
	for _, n := range nodes {
		ps = append(ps, peer.Peer{Name: n.name, URL: n.url})
	}
	return ps
}

// startPeerNodes serves every node, each with a coordinator over the
// nodes and extra (nodes that are no stand-ins). ttl is the
// coordinator's lease TTL (0: default).
func startPeerNodes(t *testing.T, nodes []*peerNode, ttl time.Duration, extra ...peer.Peer) {
	t.Helper()
	for _, n := range nodes {
		n.srv = httptest.NewUnstartedServer(nil)
		n.url = "http://" + n.srv.Listener.Addr().String()
	}
	list := append(peerList(nodes), extra...)
	for _, n := range nodes {
		coord := peer.NewCoordinator(peer.CoordinatorConfig{Self: n.name, Store: n.st, Token: testPeerToken,
			Peers: func() []peer.Peer { return list }, LeaseTTL: ttl})
		n.srv.Config.Handler = n.handler(coord)
		n.srv.Start()
		t.Cleanup(n.srv.Close)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); n.exportValid(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
}

// peersFile writes self's peers file for nodes and loads it as the
// fetch child does.
func peersFile(t *testing.T, self string, list []peer.Peer) *peer.File {
	t.Helper()
	data, err := json.Marshal(peer.File{Version: 1, Self: self, Token: testPeerToken, Peers: list})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	pf, err := peer.LoadFile(file)
	if err != nil || pf == nil {
		t.Fatalf("LoadFile: %v, %v", pf, err)
	}
	return pf
}

func (n *peerNode) handler(coord http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !peer.CheckToken(r, testPeerToken) {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		switch p := r.URL.Path; {
		case strings.HasPrefix(p, "/storepkg/v1/"):
			coord.ServeHTTP(w, r)
		case p == "/nix-cache-info":
			fmt.Fprint(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n")
		case strings.HasSuffix(p, ".narinfo"):
			n.narinfo(w, r, strings.TrimSuffix(strings.TrimPrefix(p, "/"), ".narinfo"))
		case strings.HasPrefix(p, "/nar/"):
			n.narRequests.Add(1)
			data, err := os.ReadFile(filepath.Join(n.cacheDir, filepath.FromSlash(strings.TrimPrefix(p, "/"))))
			if err != nil {
				http.NotFound(w, r)
				return
			}
			if n.tamper {
				data = tamperNAR(data)
			}
			w.Write(data)
		default:
			http.NotFound(w, r)
		}
	})
}

// narinfo serves hash's narinfo once its path is valid in the node's
// store and exported, waiting up to ?wait= seconds for it.
func (n *peerNode) narinfo(w http.ResponseWriter, r *http.Request, hash string) {
	var wait time.Duration
	if s := r.URL.Query().Get("wait"); s != "" {
		secs, err := strconv.Atoi(s)
		if err != nil || secs < 0 {
			http.Error(w, "bad wait", http.StatusBadRequest)
			return
		}
		wait = min(time.Duration(secs)*time.Second, peer.MaxWait)
	}
	deadline := time.Now().Add(wait)
	for {
		n.mu.Lock()
		ok := n.exported[hash]
		n.mu.Unlock()
		if ok {
			http.ServeFile(w, r, filepath.Join(n.cacheDir, hash+".narinfo"))
			return
		}
		if !time.Now().Before(deadline) {
			http.NotFound(w, r)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// exportValid exports, every 50 ms until ctx ends, the paths that
// became valid in the node's store, so that a narinfo request is
// answered within its wait whatever nix copy takes.
func (n *peerNode) exportValid(ctx context.Context) {
	for ctx.Err() == nil {
		entries, _ := os.ReadDir(filepath.Join(n.root, "nix", "store"))
		var paths []storepath.Path
		for _, e := range entries {
			if p, err := storepath.ParseBase(e.Name()); err == nil {
				paths = append(paths, p)
			}
		}
		valid, _ := n.st.ValidSubset(ctx, paths)
		for _, p := range paths {
			if valid[p] {
				if err := n.export(ctx, p); err != nil && ctx.Err() == nil {
					n.t.Logf("node %s: %v", n.name, err)
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// export writes p (and its closure) to the node's cache with Nix.
func (n *peerNode) export(ctx context.Context, p storepath.Path) error {
	n.exportMu.Lock()
	defer n.exportMu.Unlock()
	n.mu.Lock()
	done := n.exported[p.HashPart()]
	n.mu.Unlock()
	if done {
		return nil
	}
	to := fmt.Sprintf("file://%s?compression=%s", n.cacheDir, n.compression)
	out, err := nixtest.CommandContext(ctx, "nix", "copy", "--store", nixtest.StoreURI(n.root), "--to", to, p.Absolute()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nix copy %s: %v: %s", p, err, out)
	}
	// nix copy copies the closure: every path of it is exported.
	out, err = nixtest.CommandContext(ctx, "nix-store", "--store", nixtest.StoreURI(n.root), "-qR", p.Absolute()).Output()
	if err != nil {
		return fmt.Errorf("nix-store -qR %s: %v", p, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, abs := range strings.Fields(string(out)) {
		n.exported[filepath.Base(abs)[:storepath.HashLen]] = true
	}
	return nil
}

// tamperNAR flips the first byte of the first non-empty file in an
// uncompressed NAR: its size and structure stay, its hash changes.
func tamperNAR(data []byte) []byte {
	data = bytes.Clone(data)
	for off := 0; ; {
		i := bytes.Index(data[off:], []byte("contents"))
		if i < 0 {
			panic("tamperNAR: no file contents in the NAR (is the cache uncompressed?)")
		}
		at := off + i + 8
		if size := binary.LittleEndian.Uint64(data[at:]); size > 0 {
			data[at+8] ^= 0xff
			return data
		}
		off = at
	}
}

// countingUpstream serves the cache at dir, counting the NAR requests
// per file.
type countingUpstream struct {
	url   string
	delay time.Duration // before each NAR response
	mu    sync.Mutex
	nar   map[string]int
}

func newCountingUpstream(t *testing.T, dir string) *countingUpstream {
	return newSlowUpstream(t, dir, 0)
}

// newSlowUpstream is a counting upstream that answers each NAR request
// after delay.
func newSlowUpstream(t *testing.T, dir string, delay time.Duration) *countingUpstream {
	u := &countingUpstream{nar: map[string]int{}, delay: delay}
	u.url = nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				u.mu.Lock()
				u.nar[r.URL.Path]++
				u.mu.Unlock()
				time.Sleep(u.delay)
			}
			h.ServeHTTP(w, r)
		})
	})
	return u
}

// counts returns the NAR requests: in all, and of the file most asked.
func (u *countingUpstream) counts() (total, most int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, n := range u.nar {
		total += n
		most = max(most, n)
	}
	return total, most
}
