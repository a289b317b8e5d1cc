package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// storepkgCLI builds cmd/storepkg, the fetch child, once per test binary
// into cliDir, which TestMain removes (a test's cleanup would remove it
// from under the next run of -count).
var storepkgCLI = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "agent-cli-")
	if err != nil {
		return "", err
	}
	cliDir = dir
	bin := filepath.Join(dir, "storepkg")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/storepkg/storepkg/cmd/storepkg").CombinedOutput(); err != nil {
		return "", &exec.Error{Name: "go build cmd/storepkg: " + string(out), Err: err}
	}
	return bin, nil
})

var cliDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if cliDir != "" {
		os.RemoveAll(cliDir)
	}
	os.Exit(code)
}

// haltingCache serves dir on 127.0.0.1 and sends only the first half of
// each NAR (with the whole file's Content-Length) until release(nar) is
// called for it: a fetch stays mid-NAR as long as the test wants.
func haltingCache(t *testing.T, dir string) (url string, release func(nar string)) {
	t.Helper()
	var mu sync.Mutex
	gates := map[string]chan struct{}{}
	gate := func(nar string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if gates[nar] == nil {
			gates[nar] = make(chan struct{})
		}
		return gates[nar]
	}
	done := make(chan struct{})
	url = nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/nar/") {
				h.ServeHTTP(w, r)
				return
			}
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(r.URL.Path)))
			if err != nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			select {
			case <-gate(strings.TrimPrefix(r.URL.Path, "/")):
			case <-done:
				return
			case <-r.Context().Done():
				return
			}
			w.Write(data[len(data)/2:])
		})
	})
	t.Cleanup(func() { close(done) }) // before the server closes: it waits for handlers
	return url, func(nar string) { close(gate(nar)) }
}

// TestSweepsTemporariesOfKilledFetches: a real `storepkg fetch` killed
// mid-NAR leaves its temporary directory (and its path's lock file); one
// pass of the agent's loop removes them, and leaves alone the temporary
// directory of a fetch that is writing it at the same time, which then
// completes. Real Nix verifies the store.
func TestSweepsTemporariesOfKilledFetches(t *testing.T) {
	nixtest.Require(t, "nix-store")
	bin, err := storepkgCLI()
	if err != nil {
		t.Fatal(err)
	}

	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "agent-temp-1", Key: priv}
	cacheDir := t.TempDir()
	w, err := cachetest.NewWriter(cacheDir, key, false)
	if err != nil {
		t.Fatal(err)
	}
	nars := map[storepath.Path]string{}
	add := func(name string) storepath.Path {
		src := filepath.Join(t.TempDir(), name)
		os.MkdirAll(src, 0o755)
		data := make([]byte, 2<<20)
		rand.Read(data)
		if err := os.WriteFile(filepath.Join(src, "data"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		p := cachetest.MakePath("agent-temp", name)
		ni, err := w.Add(p, src, nil)
		if err != nil {
			t.Fatal(err)
		}
		nars[p] = ni.URL
		return p
	}
	killed, live := add("killed-1.0"), add("live-1.0")
	url, release := haltingCache(t, cacheDir)
	root := t.TempDir()
	storeDir := filepath.Join(root, "nix", "store")

	// start runs a fetch child and waits until it is writing p's
	// temporary directory, half of the NAR in.
	// The channel yields the child's exit once.
	start := func(p storepath.Path) (*exec.Cmd, chan error) {
		t.Helper()
		cmd := exec.Command(bin, "fetch", "--root", root, "--substituter", url, "--trusted-public-key", key.Public().String(), p.Absolute())
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		waited := make(chan struct{})
		go func() { exited <- cmd.Wait(); close(waited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-waited
		})
		data := filepath.Join(storeDir, p.Base()+".storepkg-tmp", "data")
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if fi, err := os.Stat(data); err == nil && fi.Size() > 0 {
				return cmd, exited
			}
			select {
			case err := <-exited:
				t.Fatalf("fetch of %s exited before writing its temporary directory: %v", p, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("fetch of %s wrote no %s in 30s", p, data)
			}
		}
	}

	killedCmd, killedExited := start(killed)
	if err := killedCmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-killedExited
	killedTmp := filepath.Join(storeDir, killed.Base()+".storepkg-tmp")
	killedLock := filepath.Join(storeDir, killed.Base()+".lock")
	for _, f := range []string{killedTmp, killedLock} {
		if _, err := os.Lstat(f); err != nil {
			t.Fatalf("the killed fetch left no %s: %v", f, err)
		}
	}

	_, liveExited := start(live)
	liveTmp := filepath.Join(storeDir, live.Base()+".storepkg-tmp")

	// One pass of the agent's loop, below its collection threshold, while
	// the live fetch is mid-NAR.
	runAgent(t, root, Config{MinAge: -1, HighPercent: 100, LowPercent: 99}, 1)
	for _, f := range []string{killedTmp, killedLock} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("after an agent pass, the killed fetch's %s is still there: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(liveTmp, "data")); err != nil || fi.Size() == 0 {
		t.Fatalf("the live fetch's temporary directory was touched by the agent: %v", err)
	}

	release(nars[live])
	select {
	case err := <-liveExited:
		if err != nil {
			t.Fatalf("the live fetch failed after the agent's pass: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the live fetch did not end in 60s")
	}
	for _, e := range nixtest.StoreEntries(t, root) {
		if strings.HasSuffix(e, ".storepkg-tmp") || strings.HasSuffix(e, ".lock") {
			t.Errorf("left in the store: %s", e)
		}
	}
	if _, err := os.Lstat(filepath.Join(storeDir, killed.Base())); !os.IsNotExist(err) {
		t.Errorf("the killed fetch's path is in the store: %v", err)
	}
	if got := nixtest.QueryClosure(t, root, live.Absolute()); len(got) != 1 || got[0] != live.Absolute() {
		t.Errorf("nix-store -qR %s: %v", live, got)
	}
	nixtest.Verify(t, root)
}
