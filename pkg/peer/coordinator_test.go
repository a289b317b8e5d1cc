package peer_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

const coordToken = "coordinator-test-token"

// validPath makes a single-file path valid in st, as an install does.
func validPath(t *testing.T, st *store.Store, p storepath.Path) {
	t.Helper()
	ctx := context.Background()
	tmp, err := st.PrepareInstall(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := st.CommitInstall(tmp, p); err != nil {
		t.Fatal(err)
	}
	if err := st.Register(ctx, []store.PathInfo{{Path: p, NarHash: [32]byte{1}, NarSize: 1, RegistrationTime: time.Now()}}); err != nil {
		t.Fatal(err)
	}
}

type coordFixture struct {
	url   string
	mu    sync.Mutex
	peers []peer.Peer
}

func (f *coordFixture) client(node string) *peer.Client {
	return &peer.Client{Self: node, Token: coordToken}
}

func (f *coordFixture) self() peer.Peer { return peer.Peer{Name: "node-a", URL: f.url} }

func (f *coordFixture) setPeers(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = nil
	for _, n := range names {
		f.peers = append(f.peers, peer.Peer{Name: n, URL: "http://" + n})
	}
}

func newCoord(t *testing.T, ttl time.Duration) (*coordFixture, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &coordFixture{}
	f.setPeers("node-a", "node-b", "node-c")
	h := peer.NewCoordinator(peer.CoordinatorConfig{Self: "node-a", Store: st, Token: coordToken, LeaseTTL: ttl, DoneTTL: time.Hour,
		Peers: func() []peer.Peer { f.mu.Lock(); defer f.mu.Unlock(); return f.peers }})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f, st
}

func claim(t *testing.T, f *coordFixture, node string, p storepath.Path, gone string) (string, bool) {
	t.Helper()
	var g map[storepath.Path]string
	if gone != "" {
		g = map[storepath.Path]string{p: gone}
	}
	resp, err := f.client(node).Claim(context.Background(), f.self(), []storepath.Path{p}, g)
	if err != nil {
		t.Fatal(err)
	}
	have := len(resp.Have) == 1 && resp.Have[0] == p.Absolute()
	return resp.Holders[p.Absolute()], have
}

func TestCoordinator(t *testing.T) {
	const ttl = 400 * time.Millisecond
	f, st := newCoord(t, ttl)
	valid := storepath.Path("11111111111111111111111111111111-valid")
	p := storepath.Path("22222222222222222222222222222222-p")
	validPath(t, st, valid)

	check := func(what, node string, path storepath.Path, gone, wantHolder string, wantHave bool) {
		t.Helper()
		if h, have := claim(t, f, node, path, gone); h != wantHolder || have != wantHave {
			t.Errorf("%s: holder %q (have %v), want %q (have %v)", what, h, have, wantHolder, wantHave)
		}
	}
	check("a path valid in the coordinator's store", "node-b", valid, "", "node-a", true)
	check("... reported gone", "node-b", valid, "node-a", "node-b", false)
	check("first claim", "node-b", p, "", "node-b", false)
	check("second claimer", "node-c", p, "", "node-b", false)
	// Renewed by its holder's claims: it outlives one TTL.
	for range 3 {
		time.Sleep(ttl / 2)
		check("renewal", "node-b", p, "", "node-b", false)
	}
	check("lease alive", "node-c", p, "", "node-b", false)
	time.Sleep(ttl + 50*time.Millisecond)
	check("lease expired", "node-c", p, "", "node-c", false)
	// Done: kept beyond the lease TTL.
	if err := f.client("node-c").Done(context.Background(), f.self(), []storepath.Path{p}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	check("done", "node-b", p, "", "node-c", true)
	check("done holder reported gone", "node-b", p, "node-c", "node-b", false)
	// A holder that leaves the peer list loses its records.
	q := storepath.Path("33333333333333333333333333333333-q")
	check("q", "node-c", q, "", "node-c", false)
	f.setPeers("node-a", "node-b")
	check("holder left", "node-b", q, "", "node-b", false)

	// Refusals: no token, a node not listed, a bad path, a bad body.
	post := func(tok, body string) int {
		req, _ := http.NewRequest(http.MethodPost, f.url+peer.ClaimPath, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		tok, body string
		want      int
	}{
		{"", `{"node":"node-b","paths":[]}`, http.StatusUnauthorized},
		{"wrong", `{"node":"node-b","paths":[]}`, http.StatusUnauthorized},
		{coordToken, `{"node":"node-z","paths":[]}`, http.StatusForbidden},
		{coordToken, `{"node":"node-b","paths":["/etc/passwd"]}`, http.StatusBadRequest},
		{coordToken, `{"node":`, http.StatusBadRequest},
		{coordToken, `{"node":"node-b","paths":[]}`, http.StatusOK},
	} {
		if got := post(tc.tok, tc.body); got != tc.want {
			t.Errorf("token %q, body %s: HTTP %d, want %d", tc.tok, tc.body, got, tc.want)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, f.url+peer.ClaimPath, nil)
	req.Header.Set("Authorization", "Bearer "+coordToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET claim: %v %v", resp, err)
	}
}
