package fetch_test

import (
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
)

// TestTwoProcessesFetchOnce: two storepkg processes fetching the same
// closure into one store at once download every NAR exactly once.
func TestTwoProcessesFetchOnce(t *testing.T) {
	fx, key, caches := fixture(t)
	bin := buildCLI(t)
	var mu sync.Mutex
	narGets := map[string]int{}
	url := nixtest.Serve(t, caches["zstd"], func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				mu.Lock()
				narGets[r.URL.Path]++
				mu.Unlock()
				time.Sleep(150 * time.Millisecond) // keep both processes in flight together
			}
			h.ServeHTTP(w, r)
		})
	})
	root := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	outs := make([][]byte, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = exec.Command(bin, "fetch", "--root", root, "--substituter", url,
				"--trusted-public-key", key.Public, fx.Root).CombinedOutput()
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("process %d: %v\n%s", i, errs[i], outs[i])
		}
	}
	if len(narGets) != len(fx.Closure) {
		t.Errorf("%d NARs requested, closure has %d paths", len(narGets), len(fx.Closure))
	}
	for p, n := range narGets {
		if n != 1 {
			t.Errorf("%s downloaded %d times", p, n)
		}
	}
	nixtest.Verify(t, root)
	if got := nixtest.QueryClosure(t, root, fx.Root); !equalStrings(got, fx.Closure) {
		t.Errorf("closure %v, want %v", got, fx.Closure)
	}
}

// TestSIGKILLMidDownload: a fetch killed while NARs are half downloaded
// leaves nothing a rerun trips over, and the rerun completes the closure.
func TestSIGKILLMidDownload(t *testing.T) {
	fx, key, caches := fixture(t)
	bin := buildCLI(t)
	stalled := make(chan struct{}, 64)
	release := make(chan struct{})
	slow := nixtest.Serve(t, caches["none"], func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/nar/") {
				h.ServeHTTP(w, r)
				return
			}
			// Send the first bytes, then hang until the client goes away.
			rec := &prefixWriter{ResponseWriter: w, limit: 4096}
			h.ServeHTTP(rec, r)
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			stalled <- struct{}{}
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	root := t.TempDir()
	cmd := exec.Command(bin, "fetch", "--root", root, "--substituter", slow, "--trusted-public-key", key.Public, fx.Root)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-stalled:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatal("no NAR download started")
		}
	}
	time.Sleep(100 * time.Millisecond) // let the unpacker write what it got
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	t.Logf("left by the killed fetch: %v", nixtest.StoreEntries(t, root))

	fast := nixtest.Serve(t, caches["none"], nil)
	out, err := exec.Command(bin, "fetch", "--root", root, "--substituter", fast, "--trusted-public-key", key.Public, fx.Root).CombinedOutput()
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	nixtest.Verify(t, root)
	if got := nixtest.QueryClosure(t, root, fx.Root); !equalStrings(got, fx.Closure) {
		t.Errorf("closure %v, want %v", got, fx.Closure)
	}
	assertUntouched(t, root, "")
	for _, e := range nixtest.StoreEntries(t, root) {
		if strings.HasSuffix(e, ".lock") || strings.Contains(e, "tmp") {
			t.Errorf("leftover %s in the store", e)
		}
	}
}

// prefixWriter passes through only the first limit bytes of a response.
type prefixWriter struct {
	http.ResponseWriter
	limit int
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	n := len(b)
	if p.limit <= 0 {
		return n, nil
	}
	if len(b) > p.limit {
		b = b[:p.limit]
	}
	p.limit -= len(b)
	if _, err := p.ResponseWriter.Write(b); err != nil {
		return 0, err
	}
	return n, nil
}
