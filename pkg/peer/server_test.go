package peer_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/nar"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

const token = "s3cret-peer-token"

// shared is built once per test binary: the storepkg CLI (the real fetch
// child that fills the served stores) and a Nix-built closure in a
// signed file:// cache.
var shared struct {
	once  sync.Once
	err   error
	dir   string
	cli   string
	fx    *nixtest.Fixture
	key   nixtest.Key
	cache string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		store.RemoveTree(shared.dir)
	}
	os.Exit(code)
}

func setup(t *testing.T) {
	t.Helper()
	nixtest.Require(t, "nix", "nix-build", "nix-store")
	shared.once.Do(func() {
		shared.err = fmt.Errorf("set-up failed in an earlier test")
		dir, err := os.MkdirTemp("", "storepkg-peer-test-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		shared.cli = filepath.Join(dir, "storepkg")
		if out, err := exec.Command("go", "build", "-o", shared.cli, "github.com/storepkg/storepkg/cmd/storepkg").CombinedOutput(); err != nil {
			t.Fatalf("go build cmd/storepkg: %v\n%s", err, out)
		}
		shared.fx = nixtest.BuildClosure(t, dir)
		shared.key = nixtest.GenerateKey(t, dir, "upstream-1")
		shared.cache = filepath.Join(dir, "cache")
		shared.fx.WriteCache(t, shared.cache, "xz", shared.key)
		shared.err = nil
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
}

// fetch runs the real `storepkg fetch` into the store under root: the
// paths get the upstream cache's signatures, as on a node.
func fetch(t *testing.T, root string, paths ...string) {
	t.Helper()
	args := []string{"fetch", "--root", root, "--substituter", "file://" + shared.cache, "--trusted-public-key", shared.key.Public}
	out, err := exec.Command(shared.cli, append(args, paths...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("storepkg fetch %s: %v\n%s", strings.Join(paths, " "), err, out)
	}
}

type served struct {
	root string
	st   *store.Store
	srv  *peer.Server
	url  string // with the token added to each request (for Nix)
	raw  string // as is
}

// serve opens a store under a new root, fetches paths into it and serves
// it on 127.0.0.1.
func serve(t *testing.T, cfg peer.ServerConfig, paths ...string) *served {
	t.Helper()
	setup(t)
	s := &served{root: t.TempDir()}
	if len(paths) > 0 {
		fetch(t, s.root, paths...)
	}
	st, err := store.Open(context.Background(), s.root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s.st = st
	cfg.Store = st
	if cfg.Token == "" {
		cfg.Token = token
	}
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		cfg.Log = logrus.NewEntry(l)
	}
	s.srv, err = peer.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw := httptest.NewServer(s.srv.Handler())
	t.Cleanup(raw.Close)
	s.raw = raw.URL
	// Nix 2.8 sends no bearer tokens (only netrc's basic auth): its
	// requests get the token on the way in, and go through the same check.
	withToken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+cfg.Token)
		s.srv.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(withToken.Close)
	s.url = withToken.URL
	return s
}

func get(t *testing.T, url, tok string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// short is a body fit for a test's message.
func short(body string) string {
	if len(body) > 200 {
		return fmt.Sprintf("%q… (%d bytes)", body[:200], len(body))
	}
	return fmt.Sprintf("%q", body)
}

func hashPart(abs string) string {
	p, err := storepath.Parse(abs)
	if err != nil {
		panic(err)
	}
	return p.HashPart()
}

// TestNixSubstitutesFromPeer: real Nix substitutes the whole closure
// from the server into a fresh store, with NARs plain and compressed on
// the fly, and verifies every path's contents.
func TestNixSubstitutesFromPeer(t *testing.T) {
	setup(t)
	for _, comp := range []string{peer.CompressionNone, peer.CompressionZstd} {
		t.Run(comp, func(t *testing.T) {
			s := serve(t, peer.ServerConfig{Compression: comp}, shared.fx.Root)
			dst := t.TempDir()
			nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(dst), "-r", shared.fx.Root,
				"--option", "substituters", s.url, "--option", "trusted-public-keys", shared.key.Public)
			nixtest.Verify(t, dst)
			got := nixtest.QueryClosure(t, dst, shared.fx.Root)
			if !slices.Equal(got, shared.fx.Closure) {
				t.Fatalf("closure substituted: %q, want %q", got, shared.fx.Closure)
			}
			// nix copy reads the same cache.
			dst2 := t.TempDir()
			nixtest.Run(t, "nix", "copy", "--from", s.url, "--to", nixtest.StoreURI(dst2), shared.fx.Root,
				"--option", "trusted-public-keys", shared.key.Public)
			nixtest.Verify(t, dst2)
		})
	}
}

// TestAuth: without the token, or with a wrong one, every route is 401.
func TestAuth(t *testing.T) {
	setup(t)
	s := serve(t, peer.ServerConfig{Coordinator: http.NotFoundHandler()}, shared.fx.Root)
	h := hashPart(shared.fx.Root)
	for _, path := range []string{"/nix-cache-info", "/" + h + ".narinfo", "/nar/" + h + "-x.nar", "/storepkg/v1/claim"} {
		for _, tok := range []string{"", "wrong", token + "x", strings.ToUpper(token)} {
			if code, _ := get(t, s.raw+path, tok); code != http.StatusUnauthorized {
				t.Errorf("GET %s with token %q: %d, want 401", path, tok, code)
			}
		}
		req, _ := http.NewRequest("GET", s.raw+path, nil)
		req.SetBasicAuth("nix", token)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s with basic auth: %v %v, want 401", path, resp.Status, err)
		}
	}
	if code, body := get(t, s.raw+"/nix-cache-info", token); code != http.StatusOK || !strings.Contains(body, "StoreDir: /nix/store\n") {
		t.Errorf("nix-cache-info with the token: %d %s", code, short(body))
	}
	if code, _ := get(t, s.raw+"/storepkg/v1/claim", token); code != http.StatusNotFound {
		t.Errorf("coordinator route with the token: %d, want the coordinator's 404", code)
	}
	if _, err := peer.NewServer(peer.ServerConfig{Store: s.st}); err == nil || !strings.Contains(err.Error(), "token") {
		t.Errorf("NewServer without a token: %v", err)
	}
}

// TestPeerAddresses: with a peer list, a client not at a listed host is
// refused (403); one at a listed host or on this machine is served. A
// real connection cannot come from a foreign address on demand, so the
// requests are made up, beside the loopback ones of the other tests.
func TestPeerAddresses(t *testing.T) {
	peers := []peer.Peer{{Name: "node-a", URL: "http://10.244.1.3:7420"}, {Name: "node-b", URL: "http://[fd00::2]:7420"}}
	s := serve(t, peer.ServerConfig{Peers: func() []peer.Peer { return peers }})
	for addr, want := range map[string]int{
		"10.244.1.3:51000": http.StatusOK,
		"[fd00::2]:51000":  http.StatusOK,
		"127.0.0.1:51000":  http.StatusOK,
		"10.244.1.4:51000": http.StatusForbidden,
		"[fd00::3]:51000":  http.StatusForbidden,
		"garbage":          http.StatusForbidden,
	} {
		req := httptest.NewRequest("GET", "/nix-cache-info", nil)
		req.RemoteAddr = addr
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		s.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("client %s: %d, want %d", addr, rec.Code, want)
		}
	}
}

// TestNotFound: a path that is not valid, one without signatures, and
// malformed names are 404, a bad wait is 400.
func TestNotFound(t *testing.T) {
	setup(t)
	s := serve(t, peer.ServerConfig{}, shared.fx.Root)
	// A path real Nix adds itself has no signatures.
	f := filepath.Join(t.TempDir(), "unsigned")
	os.WriteFile(f, []byte("unsigned\n"), 0o644)
	unsigned := strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(s.root), "--add", f))
	for path, want := range map[string]int{
		"/" + hashPart(shared.fx.Root) + ".narinfo":        http.StatusOK,
		"/" + hashPart(unsigned) + ".narinfo":              http.StatusNotFound,
		"/00000000000000000000000000000000.narinfo":        http.StatusNotFound,
		"/" + hashPart(shared.fx.Root) + ".narinfo?wait=x": http.StatusBadRequest,
		"/short.narinfo":               http.StatusNotFound,
		"/" + hashPart(shared.fx.Root): http.StatusNotFound,
		"/nar/00000000000000000000000000000000-" + strings.Repeat("0", 52) + ".nar": http.StatusNotFound,
		"/nar/garbage.nar": http.StatusNotFound,
	} {
		if code, body := get(t, s.raw+path, token); code != want {
			t.Errorf("GET %s: %d %s, want %d", path, code, short(body), want)
		}
	}
}

func parseNarInfo(t *testing.T, body string) *narinfo.NarInfo {
	t.Helper()
	ni, err := narinfo.ParseBytes([]byte(body))
	if err != nil {
		t.Fatalf("narinfo: %v\n%s", err, body)
	}
	return ni
}

// TestNarInfoAndNar: the narinfo carries the upstream signature (it
// verifies with the upstream key) and what Nix's database says; the NAR
// hashes to its NarHash; a NAR URL whose hash is not the path's current
// one (the path deleted and registered again with other contents
// meanwhile), or of a path deleted meanwhile, is 404.
func TestNarInfoAndNar(t *testing.T) {
	setup(t)
	s := serve(t, peer.ServerConfig{}, shared.fx.Root)
	key, err := narinfo.ParsePublicKey(shared.key.Public)
	if err != nil {
		t.Fatal(err)
	}
	var leaf string // a path without references but itself
	for _, abs := range shared.fx.Closure {
		code, body := get(t, s.raw+"/"+hashPart(abs)+".narinfo", token)
		if code != http.StatusOK {
			t.Fatalf("%s.narinfo: %d %s", hashPart(abs), code, short(body))
		}
		ni := parseNarInfo(t, body)
		if ni.StorePath.Absolute() != abs {
			t.Errorf("narinfo of %s names %s", abs, ni.StorePath)
		}
		if err := ni.VerifySignatures([]narinfo.PublicKey{key}); err != nil {
			t.Errorf("%s: %v", abs, err)
		}
		refs := strings.Fields(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(s.root), "-q", "--references", abs))
		var got []string
		for _, r := range ni.References {
			got = append(got, r.Absolute())
		}
		slices.Sort(refs)
		if !slices.Equal(got, refs) {
			t.Errorf("%s: references %q, Nix says %q", abs, got, refs)
		}
		resp, err := authGet(s.raw+"/"+ni.URL, token)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s %v", ni.URL, resp.Status, err)
		}
		if narinfo.Hash(h.Sum(nil)) != ni.NarHash || uint64(n) != ni.NarSize || resp.ContentLength != n {
			t.Errorf("%s: NAR of %d bytes (Content-Length %d) does not match NarHash/NarSize %d", ni.URL, n, resp.ContentLength, ni.NarSize)
		}
		if len(ni.References) == 0 || (len(ni.References) == 1 && ni.References[0] == ni.StorePath) {
			leaf = abs
		}
	}

	code, body := get(t, s.raw+"/"+hashPart(leaf)+".narinfo", token)
	ni := parseNarInfo(t, body)
	// The path replaced meanwhile: its NarHash is no longer the URL's.
	other := strings.Replace(ni.URL, "-", "-1", 1)
	other = other[:len("nar/")+32+1+52] + ".nar"
	if code, body := get(t, s.raw+"/"+other, token); code != http.StatusNotFound || !strings.Contains(body, "NAR hash") {
		t.Errorf("NAR URL with another hash: %d %s, want 404 naming the NAR hash", code, short(body))
	}
	// Deleted meanwhile (in a store that served no NAR, so holds no root).
	s2 := serve(t, peer.ServerConfig{}, shared.fx.Root)
	top := hashPart(shared.fx.Root)
	_, body = get(t, s2.raw+"/"+top+".narinfo", token)
	ni = parseNarInfo(t, body)
	nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(s2.root), "--delete", shared.fx.Root)
	if code, _ = get(t, s2.raw+"/"+ni.URL, token); code != http.StatusNotFound {
		t.Errorf("NAR of a deleted path: %d, want 404", code)
	}
	if code, _ = get(t, s2.raw+"/"+top+".narinfo", token); code != http.StatusNotFound {
		t.Errorf("narinfo of a deleted path: %d, want 404", code)
	}
	// Then registered again with other contents: the old URL is 404, the
	// new narinfo's URL serves the new NAR.
	p, _ := storepath.Parse(shared.fx.Root)
	real := s2.st.RealPath(p)
	if err := os.WriteFile(real, []byte("other contents\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := nar.WriteTree(context.Background(), h, real)
	if err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if err := s2.st.Register(context.Background(), []store.PathInfo{{Path: p, NarHash: sum, NarSize: uint64(n), Sigs: ni.Sigs}}); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, s2.raw+"/"+ni.URL, token); code != http.StatusNotFound || !strings.Contains(body, "NAR hash") {
		t.Errorf("old NAR URL of a replaced path: %d %s, want 404 naming the NAR hash", code, short(body))
	}
	_, body = get(t, s2.raw+"/"+top+".narinfo", token)
	if ni2 := parseNarInfo(t, body); ni2.URL == ni.URL {
		t.Errorf("narinfo of the replaced path still has the old URL")
	} else if code, body := get(t, s2.raw+"/"+ni2.URL, token); code != http.StatusOK || narinfo.Hash(sha256.Sum256([]byte(body))) != ni2.NarHash {
		t.Errorf("NAR of the replaced path: %d, or not its NarHash", code)
	}
}

func authGet(url, tok string) (*http.Response, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return http.DefaultClient.Do(req)
}

// TestNarInfoWait: a request with ?wait returns as soon as a real fetch
// registers the path in the served store, and 404 when the wait ends
// without it.
func TestNarInfoWait(t *testing.T) {
	setup(t)
	s := serve(t, peer.ServerConfig{WaitPoll: 100 * time.Millisecond})
	h := hashPart(shared.fx.Root)
	type answer struct {
		code int
		body string
		at   time.Time
	}
	got := make(chan answer, 1)
	go func() {
		code, body := get(t, s.raw+"/"+h+".narinfo?wait=30", token)
		got <- answer{code, body, time.Now()}
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case a := <-got:
		t.Fatalf("answered %d before the path was fetched: %s", a.code, short(a.body))
	default:
	}
	fetch(t, s.root, shared.fx.Root)
	fetched := time.Now()
	select {
	case a := <-got:
		if a.code != http.StatusOK || !strings.Contains(a.body, "StorePath: "+shared.fx.Root+"\n") {
			t.Fatalf("after the fetch: %d %s", a.code, short(a.body))
		}
		t.Logf("answered %v after the fetch exited", a.at.Sub(fetched))
	case <-time.After(5 * time.Second):
		t.Fatal("no answer 5s after the fetch registered the path")
	}

	start := time.Now()
	code, _ := get(t, s.raw+"/00000000000000000000000000000000.narinfo?wait=1", token)
	if d := time.Since(start); code != http.StatusNotFound || d < time.Second || d > 5*time.Second {
		t.Errorf("wait for a path that never comes: %d after %v, want 404 after 1s", code, d)
	}
}

// TestManyWaitersOnePoll: waiters share one lookup per poll interval.
func TestManyWaitersOnePoll(t *testing.T) {
	setup(t)
	s := serve(t, peer.ServerConfig{WaitPoll: 100 * time.Millisecond})
	before := peer.Polls(s.srv)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := fmt.Sprintf("%032d", i)
			if code, _ := get(t, s.raw+"/"+h+".narinfo?wait=1", token); code != http.StatusNotFound {
				t.Errorf("%s: %d", h, code)
			}
		}()
	}
	wg.Wait()
	polls := peer.Polls(s.srv) - before
	t.Logf("%d store lookups by the poll for 200 waiters of 1s", polls)
	if polls > 30 {
		t.Errorf("%d polls of the store for 200 waiters over 1s at 100ms: want about 10", polls)
	}
}

// TestStreamedPathSurvivesGC: while a NAR is being streamed to a slow
// client, real Nix's collector does not count the path (or its closure)
// as dead, though nothing else roots it; afterwards it does.
func TestStreamedPathSurvivesGC(t *testing.T) {
	setup(t)
	s := serve(t, peer.ServerConfig{}, shared.fx.Root)
	var big *narinfo.NarInfo
	for _, abs := range shared.fx.Closure {
		_, body := get(t, s.raw+"/"+hashPart(abs)+".narinfo", token)
		if ni := parseNarInfo(t, body); big == nil || ni.NarSize > big.NarSize {
			big = ni
		}
	}
	dead := func() []string {
		return strings.Fields(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(s.root), "--gc", "--print-dead"))
	}
	if d := dead(); !slices.Contains(d, big.StorePath.Absolute()) {
		t.Fatalf("%s is not garbage to begin with: %q", big.StorePath, d)
	}

	// A client with a tiny receive buffer that reads a little and stops:
	// the server stays mid-stream.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(s.raw, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", big.URL, token)
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", big.URL, resp.Status)
	}
	first := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the server fill the socket's buffers
	d1 := dead()
	for _, p := range append([]storepath.Path{big.StorePath}, big.References...) {
		if slices.Contains(d1, p.Absolute()) {
			t.Errorf("while %s is streamed, nix-store --gc --print-dead lists %s", big.StorePath, p)
		}
	}
	// The rest of the NAR arrives and is the path's.
	h := sha256.New()
	h.Write(first)
	if _, err := io.Copy(h, resp.Body); err != nil {
		t.Fatal(err)
	}
	if narinfo.Hash(h.Sum(nil)) != big.NarHash {
		t.Errorf("streamed NAR does not match the NarHash")
	}
}
