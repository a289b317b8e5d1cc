package fetch_test

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
)

const testPeerToken = "peer-test-token"

// peerNode is one node of a peer test: a store under its own root,
// served on 127.0.0.1 by the real peer server with the real coordinator
// mounted, as the agent serves them (pkg/agent, startPeerServer).
type peerNode struct {
	name string
	root string // the node's store root
	st   *store.Store
	ln   net.Listener
	url  string

	// compression of the NARs the node serves ("": the agent's default,
	// none).
	compression string

	narRequests atomic.Int64 // NAR requests its server got
}

// newPeerNodes makes one node per name, each with its own fresh store
// root; startPeerNodes serves them.
func newPeerNodes(t *testing.T, names ...string) []*peerNode {
	t.Helper()
	var nodes []*peerNode
	for _, name := range names {
		n := &peerNode{name: name, root: t.TempDir()}
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

// startPeerNodes serves every node's store with peer.NewServer and its
// coordinator, over the nodes and extra (peers that are not nodes of
// the test). ttl is the coordinators' lease TTL (0: default).
func startPeerNodes(t *testing.T, nodes []*peerNode, ttl time.Duration, extra ...peer.Peer) {
	t.Helper()
	for _, n := range nodes {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n.ln, n.url = ln, "http://"+ln.Addr().String()
	}
	list := append(peerList(nodes), extra...)
	peers := func() []peer.Peer { return list }
	for _, n := range nodes {
		coord := peer.NewCoordinator(peer.CoordinatorConfig{Self: n.name, Store: n.st, Token: testPeerToken,
			Peers: peers, LeaseTTL: ttl})
		srv, err := peer.NewServer(peer.ServerConfig{Store: n.st, Token: testPeerToken, Self: n.name,
			Peers: peers, Coordinator: coord, Compression: n.compression})
		if err != nil {
			t.Fatal(err)
		}
		h := srv.Handler()
		ctx, cancel := context.WithCancel(context.Background())
		var inflight sync.WaitGroup
		hs := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inflight.Add(1)
				defer inflight.Done()
				if strings.HasPrefix(r.URL.Path, "/nar/") {
					n.narRequests.Add(1)
				}
				h.ServeHTTP(w, r)
			}),
			ReadHeaderTimeout: 10 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return ctx },
		}
		served := make(chan error, 1)
		go func() { served <- hs.Serve(n.ln) }()
		t.Cleanup(func() {
			// The requests' context ends, as at the agent's shutdown.
			// Close, not the agent's Shutdown: the fetches of the test
			// live on in its process with connections their transports
			// dialed and never used, which Shutdown would wait 5s for (a
			// fetch child's end closes them).
			cancel()
			hs.Close()
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("node %s: peer server: %v", n.name, err)
			}
			// Before the store closes.
			handled := make(chan struct{})
			go func() { inflight.Wait(); close(handled) }()
			select {
			case <-handled:
			case <-time.After(10 * time.Second):
				t.Errorf("node %s: peer server requests still running 10s after the end of their context", n.name)
			}
		})
	}
}

// hungPeer is a real listener on 127.0.0.1 that accepts connections and
// never answers on them; it returns its URL.
func hungPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
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

// tamper flips the first byte of the first non-empty file (in NAR
// order) of each of paths, valid in n's store: the database keeps the
// NAR hash it registered, and n's server streams a NAR of the right size
// with other bytes, as from a disk or a node gone bad.
func tamper(t *testing.T, n *peerNode, paths []string) {
	t.Helper()
	for _, abs := range paths {
		found := false
		// WalkDir's lexical order is the NAR's order of entries.
		err := filepath.WalkDir(n.st.RealPath(mustPath(t, abs)), func(file string, d fs.DirEntry, err error) error {
			if err != nil || found || !d.Type().IsRegular() {
				return err
			}
			fi, err := d.Info()
			if err != nil || fi.Size() == 0 {
				return err
			}
			found = true
			return flipFirstByte(file, fi.Mode().Perm())
		})
		if err == nil && !found {
			t.Fatalf("%s: no non-empty file to tamper with", abs)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// flipFirstByte flips file's first byte, leaving its mode as it was
// (the store keeps files read-only).
func flipFirstByte(file string, mode fs.FileMode) error {
	if err := os.Chmod(file, mode|0o200); err != nil {
		return err
	}
	defer os.Chmod(file, mode)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 0); err != nil {
		f.Close()
		return err
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
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
