package fetch_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestNarFromAnotherCache: the cache a path's narinfo came from loses
// its NARs mid-closure; the NARs come from the next cache, whose
// narinfos describe the same NARs. A cache whose narinfo, though
// signed, describes another NAR for the path is not used: the closure
// was walked and counted with the first.
func TestNarFromAnotherCache(t *testing.T) {
	fx, key, caches := fixture(t)
	var firstNARs, secondNARs atomic.Int64
	first := nixtest.Serve(t, caches["xz"], func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				firstNARs.Add(1)
				http.Error(w, "gone", http.StatusNotFound)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	serveSecond := func(dir string) string {
		return nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/nar/") {
					secondNARs.Add(1)
				}
				h.ServeHTTP(w, r)
			})
		})
	}
	opts := func(second string) fetch.Options {
		return fetch.Options{Substituters: []string{first + "?priority=10", second + "?priority=20"},
			TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}, Retry: fetch.RetryPolicy{Attempts: 1}}
	}

	root := t.TempDir()
	res, err := fetchInto(t, root, opts(serveSecond(caches["zstd"])), fx.Root)
	if err != nil {
		t.Fatal(err)
	}
	if n := int64(len(fx.Closure)); firstNARs.Load() != n || secondNARs.Load() != n || len(res.Fetched) != len(fx.Closure) {
		t.Errorf("NAR requests: %d to the first cache, %d to the second, %d paths fetched; want %d each",
			firstNARs.Load(), secondNARs.Load(), len(res.Fetched), n)
	}
	nixtest.Verify(t, root)

	// The second cache signs another NAR for the root path.
	other := copyCache(t, caches["zstd"])
	data, err := os.ReadFile(key.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := narinfo.ParseSecretKey(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	hash, _, _ := strings.Cut(filepath.Base(fx.Root), "-")
	niFile := filepath.Join(other, hash+".narinfo")
	data, err = os.ReadFile(niFile)
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.ParseBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	ni.NarSize++
	ni.Sigs = []string{sk.Sign(ni)}
	if err := os.WriteFile(niFile, []byte(ni.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	firstNARs.Store(0)
	secondNARs.Store(0)
	_, err = fetchInto(t, t.TempDir(), opts(serveSecond(other)), fx.Root)
	if err == nil || !strings.Contains(err.Error(), "its narinfo describes another NAR") || !strings.Contains(err.Error(), fx.Root) {
		t.Fatalf("err %v, want the root's NAR refused from the second cache as another NAR", err)
	}
}
