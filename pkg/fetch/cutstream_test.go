package fetch_test

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// cutAfter is where cuttingCache drops a connection in a NAR.
const cutAfter = 4096

// cuttingCache serves dir on 127.0.0.1. The first cuts requests of each
// NAR longer than cutAfter bytes get a 200 with the whole file's
// Content-Length and then only its first cutAfter bytes before the
// connection is dropped. requests counts the requests of each NAR.
func cuttingCache(t *testing.T, dir string, cuts int) (url string, requests func() map[string]int) {
	t.Helper()
	var mu sync.Mutex
	count := map[string]int{}
	url = nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/nar/") {
				h.ServeHTTP(w, r)
				return
			}
			mu.Lock()
			count[r.URL.Path]++
			n := count[r.URL.Path]
			mu.Unlock()
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(r.URL.Path)))
			if err != nil || n > cuts || len(data) <= cutAfter {
				h.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			w.Write(data[:cutAfter])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // drops the connection mid-body
		})
	})
	return url, func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for k, v := range count {
			out[k] = v
		}
		return out
	}
}

// TestCutStreamRetried: a connection dropped in the middle of a NAR is
// retried, for every compression and both xz decoders: the decoder sees
// the transport's error, not an early end of its input. The cut NARs were
// requested again, and real Nix verifies the store.
func TestCutStreamRetried(t *testing.T) {
	fx, key, caches := fixture(t)
	defer fetch.SetPureGoXZ(false)
	for _, c := range append(compressions, "xz-go") {
		t.Run(c, func(t *testing.T) {
			comp := strings.TrimSuffix(c, "-go")
			fetch.SetPureGoXZ(c == "xz-go")
			url, requests := cuttingCache(t, caches[comp], 1)
			root := t.TempDir()
			res, err := fetchInto(t, root, fetch.Options{
				Substituters: []string{url},
				TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
				Retry:        fetch.RetryPolicy{Attempts: 4, Backoff: 5 * time.Millisecond},
			}, fx.Root)
			if err != nil {
				t.Fatalf("fetch through a cache that cuts each NAR's first transfer after %d bytes: %v", cutAfter, err)
			}
			if len(res.Fetched) != len(fx.Closure) {
				t.Errorf("fetched %d of %d paths", len(res.Fetched), len(fx.Closure))
			}
			retried := 0
			for nar, n := range requests() {
				if n > 2 {
					t.Errorf("%s requested %d times; one cut needs one more", nar, n)
				}
				if n == 2 {
					retried++
				}
			}
			if retried == 0 {
				t.Fatalf("no NAR was requested twice (requests %v): nothing was cut", requests())
			}
			t.Logf("%d NARs cut and fetched again", retried)
			nixtest.Verify(t, root)
		})
	}
}

// TestCutStreamExhausted: a NAR cut on every attempt fails the fetch
// with ErrUnavailable (fetchapi.KindUnavailable), naming the path, the
// cache and the attempts, after exactly the policy's attempts.
func TestCutStreamExhausted(t *testing.T) {
	fx, key, caches := fixture(t)
	for _, c := range compressions {
		t.Run(c, func(t *testing.T) {
			url, requests := cuttingCache(t, caches[c], 1<<30)
			root := t.TempDir()
			_, err := fetchInto(t, root, fetch.Options{
				Substituters: []string{url},
				TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
				Retry:        fetch.RetryPolicy{Attempts: 3, Backoff: 5 * time.Millisecond},
			}, fx.Root)
			t.Logf("error: %v", err)
			var pe *fetch.PathError
			if !errors.As(err, &pe) || !errors.Is(err, fetch.ErrUnavailable) || fetch.ErrorKind(err) != fetchapi.KindUnavailable {
				t.Fatalf("want a PathError of kind %s, got %v (kind %q)", fetchapi.KindUnavailable, err, fetch.ErrorKind(err))
			}
			msg := err.Error()
			for _, want := range []string{pe.Path.Absolute(), "(cache " + url + ")", "unexpected EOF", "after 3 attempts"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not say %q: %s", want, msg)
				}
			}
			data, rerr := os.ReadFile(filepath.Join(caches[c], pe.Path.HashPart()+".narinfo"))
			if rerr != nil {
				t.Fatal(rerr)
			}
			ni, rerr := narinfo.ParseBytes(data)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if n := requests()["/"+ni.URL]; n != 3 {
				t.Errorf("%s requested %d times, want 3 (the attempts)", ni.URL, n)
			}
			assertUntouched(t, root, pe.Path.Absolute())
		})
	}
}
