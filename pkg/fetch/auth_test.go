package fetch_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestPrivateCacheAuth: caches behind basic auth and a bearer token, with
// credentials from a netrc file; without them the error says what the
// server answered.
func TestPrivateCacheAuth(t *testing.T) {
	fx, key, caches := fixture(t)
	guard := func(check func(*http.Request) bool) func(http.Handler) http.Handler {
		return func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !check(r) {
					http.Error(w, "who are you", http.StatusUnauthorized)
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	}
	basic := nixtest.Serve(t, caches["zstd"], guard(func(r *http.Request) bool {
		u, p, ok := r.BasicAuth()
		return ok && u == "nixuser" && p == "s3cret"
	}))
	bearer := nixtest.Serve(t, caches["zstd"], guard(func(r *http.Request) bool {
		return r.Header.Get("Authorization") == "Bearer tok-123"
	}))
	netrc := filepath.Join(t.TempDir(), "netrc")
	host := func(u string) string { return strings.TrimPrefix(strings.Split(u, ":")[1], "//") }
	// Both servers are on 127.0.0.1 (different ports): one netrc per test.
	for name, c := range map[string]struct{ url, netrc string }{
		"basic":  {basic, "machine " + host(basic) + " login nixuser password s3cret\n"},
		"bearer": {bearer, "machine " + host(bearer) + "\nlogin bearer\npassword tok-123\n"},
	} {
		t.Run(name, func(t *testing.T) {
			opts := fetch.Options{Substituters: []string{c.url}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}}
			_, err := fetchInto(t, t.TempDir(), opts, fx.Root)
			if err == nil || !strings.Contains(err.Error(), "401") {
				t.Errorf("without credentials: %v", err)
			}
			os.WriteFile(netrc, []byte(c.netrc), 0o600)
			n, err := fetch.ParseNetrc(netrc)
			if err != nil {
				t.Fatal(err)
			}
			opts.Netrc = n
			root := t.TempDir()
			if _, err := fetchInto(t, root, opts, fx.Root); err != nil {
				t.Fatal(err)
			}
			nixtest.Verify(t, root)
		})
	}
}
