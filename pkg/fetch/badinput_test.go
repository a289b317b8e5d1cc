package fetch_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nartest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

func secretKey(t *testing.T, k nixtest.Key) narinfo.SecretKey {
	t.Helper()
	data, err := os.ReadFile(k.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := narinfo.ParseSecretKey(string(data))
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

// editNarinfo rewrites the narinfo of path in cache; with a signer the
// result is re-signed, as a compromised or buggy cache signer would.
func editNarinfo(t *testing.T, cache, path string, signer *narinfo.SecretKey, edit func(*narinfo.NarInfo)) {
	t.Helper()
	file := filepath.Join(cache, mustPath(t, path).HashPart()+".narinfo")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.ParseBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	edit(ni)
	if signer != nil {
		ni.Sigs = []string{signer.Sign(ni)}
	}
	if err := os.WriteFile(file, []byte(ni.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceNar serves nar as path's (uncompressed) NAR, with a narinfo
// that matches it and is properly signed: only the NAR rules can refuse it.
func replaceNar(t *testing.T, cache, path string, signer narinfo.SecretKey, nar []byte) {
	t.Helper()
	sum := sha256.Sum256(nar)
	rel := "nar/replaced.nar"
	if err := os.WriteFile(filepath.Join(cache, rel), nar, 0o644); err != nil {
		t.Fatal(err)
	}
	editNarinfo(t, cache, path, &signer, func(ni *narinfo.NarInfo) {
		ni.URL, ni.Compression, ni.FileHash, ni.FileSize = rel, "none", nil, 0
		ni.NarHash, ni.NarSize = sum, uint64(len(nar))
	})
}

// assertUntouched checks, with Nix, that a failed fetch left nothing
// behind: every entry of the store is a valid path, failed is not there,
// and the store verifies clean.
func assertUntouched(t *testing.T, root, failed string) {
	t.Helper()
	var entries []string
	for _, e := range nixtest.StoreEntries(t, root) {
		if e == ".links" {
			continue
		}
		if "/nix/store/"+e == failed {
			t.Errorf("failed path %s is in the store", failed)
		}
		entries = append(entries, "/nix/store/"+e)
	}
	if len(entries) > 0 {
		cmd := nixtest.Cmd("nix-store", append([]string{"--store", nixtest.StoreURI(root), "--check-validity"}, entries...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("store holds entries Nix does not consider valid: %v\n%s", err, out)
		}
	}
	nixtest.Verify(t, root)
}

func TestBadInput(t *testing.T) {
	fx, key, caches := fixture(t)
	sk := secretKey(t, key)
	app := fx.Root
	var lib string
	for _, p := range fx.Closure {
		if strings.HasSuffix(p, "-lib-1.0") {
			lib = p
		}
	}
	deep := nartest.File("x")
	for i := 0; i < 300; i++ {
		deep = nartest.Dir(nartest.Entry("d", deep))
	}
	otherKey := nixtest.GenerateKey(t, t.TempDir(), "other-1")

	cases := []struct {
		name    string
		tamper  func(t *testing.T, cache string)
		keys    []string // trusted keys; default: the cache's
		failed  string   // the path that must not become valid
		want    string   // in the error message
		wantErr error
	}{
		{name: "untrusted signature", keys: []string{otherKey.Public},
			failed: app, want: "no trusted signature (signed by test-cache-1, trusted: other-1)", wantErr: fetch.ErrUntrusted},
		{name: "missing signature", failed: app, want: "no trusted signature: unsigned", wantErr: fetch.ErrUntrusted,
			tamper: func(t *testing.T, c string) { editNarinfo(t, c, app, nil, func(ni *narinfo.NarInfo) { ni.Sigs = nil }) }},
		{name: "narinfo altered after signing", failed: app, want: "does not verify", wantErr: fetch.ErrUntrusted,
			tamper: func(t *testing.T, c string) { editNarinfo(t, c, app, nil, func(ni *narinfo.NarInfo) { ni.NarSize++ }) }},
		{name: "tampered NAR", failed: app, want: "NAR hash is", wantErr: fetch.ErrHashMismatch,
			tamper: func(t *testing.T, c string) {
				nar := dumpNar(t, fx, app)
				i := bytes.Index(nar, []byte("-selfref"))
				nar[i+1] ^= 1 // same size, different contents
				writeNarFile(t, c, app, nar)
			}},
		{name: "NarSize smaller than the NAR", failed: app, want: "longer than its NarSize", wantErr: fetch.ErrHashMismatch,
			tamper: func(t *testing.T, c string) {
				editNarinfo(t, c, app, &sk, func(ni *narinfo.NarInfo) { ni.NarSize -= 8 })
			}},
		{name: "NarSize larger than the NAR", failed: app, want: "is shorter than its NarSize", wantErr: fetch.ErrTruncated,
			tamper: func(t *testing.T, c string) {
				editNarinfo(t, c, app, &sk, func(ni *narinfo.NarInfo) { ni.NarSize += 8 })
			}},
		{name: "narinfo for another path", failed: app, want: "describes " + lib,
			tamper: func(t *testing.T, c string) {
				data, _ := os.ReadFile(filepath.Join(c, mustPath(t, lib).HashPart()+".narinfo"))
				os.WriteFile(filepath.Join(c, mustPath(t, app).HashPart()+".narinfo"), data, 0o644)
			}},
		{name: "unknown compression", failed: app, want: `unknown compression "lz4")`,
			tamper: func(t *testing.T, c string) {
				editNarinfo(t, c, app, nil, func(ni *narinfo.NarInfo) { ni.Compression = "lz4" })
			}},
		{name: "missing from the cache", failed: lib, want: "(needed by " + app + "): not found in any cache",
			wantErr: fetch.ErrNotFound,
			tamper:  func(t *testing.T, c string) { os.Remove(filepath.Join(c, mustPath(t, lib).HashPart()+".narinfo")) }},
	}
	narRules := map[string]struct {
		nar  []byte
		want string
	}{
		"bad magic":       {nartest.Encode("nix-archive-0", "(", "type", "regular", "contents", "", ")"), `expected "nix-archive-1"`},
		"dotdot entry":    {nartest.Archive(nartest.Dir(nartest.Entry("..", nartest.File("x")))), "reserved name"},
		"slash entry":     {nartest.Archive(nartest.Dir(nartest.Entry("a/b", nartest.File("x")))), "contains '/'"},
		"empty entry":     {nartest.Archive(nartest.Dir(nartest.Entry("", nartest.File("x")))), "empty name"},
		"unsorted":        {nartest.Archive(nartest.Dir(nartest.Entry("b", nartest.File("x")), nartest.Entry("a", nartest.File("x")))), "not sorted"},
		"duplicate":       {nartest.Archive(nartest.Dir(nartest.Entry("a", nartest.File("x")), nartest.Entry("a", nartest.File("x")))), "duplicate entry"},
		"trailing data":   {append(nartest.Archive(nartest.File("x")), make([]byte, 8)...), "trailing data"},
		"nonzero padding": {nartest.Encode("nix-archive-1", "(", "type", "regular", "contents", nartest.Raw{S: "x", Pad: []byte{0, 0, 0, 0, 0, 0, 7}}, ")"), "non-zero padding"},
		"unknown tag":     {nartest.Archive([]any{"(", "type", "regular", "acl", "", ")"}), `expected "contents"`},
		"deep nesting":    {nartest.Archive(deep), "nested deeper"},
	}
	for name, r := range narRules {
		cases = append(cases, struct {
			name    string
			tamper  func(t *testing.T, cache string)
			keys    []string
			failed  string
			want    string
			wantErr error
		}{name: "NAR " + name, failed: app, want: r.want,
			tamper: func(t *testing.T, c string) { replaceNar(t, c, app, sk, r.nar) }})
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cache := copyCache(t, caches["none"])
			if tc.tamper != nil {
				tc.tamper(t, cache)
			}
			opts := fetch.Options{Substituters: []string{"file://" + cache}}
			keys := tc.keys
			if keys == nil {
				keys = []string{key.Public}
			}
			for _, k := range keys {
				pk, err := narinfo.ParsePublicKey(k)
				if err != nil {
					t.Fatal(err)
				}
				opts.TrustedKeys = append(opts.TrustedKeys, pk)
			}
			root := t.TempDir()
			_, err := fetchInto(t, root, opts, app)
			if err == nil {
				t.Fatal("fetch succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.failed) {
				t.Errorf("error %q\nshould name %s and say %q", err, tc.failed, tc.want)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v is not %v", err, tc.wantErr)
			}
			wantKind := map[error]string{nil: fetchapi.KindOther, fetch.ErrUntrusted: fetchapi.KindUntrusted,
				fetch.ErrHashMismatch: fetchapi.KindHashMismatch, fetch.ErrNotFound: fetchapi.KindNotFound,
				fetch.ErrTruncated: fetchapi.KindTruncated}[tc.wantErr]
			if got := fetch.ErrorKind(err); got != wantKind {
				t.Errorf("ErrorKind = %q, want %q", got, wantKind)
			}
			var pe *fetch.PathError
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *fetch.PathError", err)
			}
			assertUntouched(t, root, tc.failed)
		})
	}
}

func dumpNar(t *testing.T, fx *nixtest.Fixture, path string) []byte {
	t.Helper()
	return []byte(nixtest.Run(t, "nix-store", "--dump", filepath.Join(fx.Store, path)))
}

// writeNarFile overwrites path's NAR file in an uncompressed cache in place
// (its narinfo, hashes and signature unchanged).
func writeNarFile(t *testing.T, cache, path string, nar []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cache, mustPath(t, path).HashPart()+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.ParseBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, ni.URL), nar, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRetriesServerErrors: every file fails twice with HTTP 500 before the
// cache serves it; the fetch succeeds.
func TestRetriesServerErrors(t *testing.T) {
	fx, key, caches := fixture(t)
	var mu sync.Mutex
	failures := map[string]int{}
	url := nixtest.Serve(t, caches["zstd"], func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			n := failures[r.URL.Path]
			failures[r.URL.Path] = n + 1
			mu.Unlock()
			if n < 2 {
				http.Error(w, "overloaded", http.StatusInternalServerError)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	root := t.TempDir()
	_, err := fetchInto(t, root, fetch.Options{
		Substituters: []string{url},
		TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
		Retry:        fetch.RetryPolicy{Attempts: 3, Backoff: 5 * time.Millisecond},
	}, fx.Root)
	if err != nil {
		t.Fatal(err)
	}
	nixtest.Verify(t, root)
	if len(failures) < 2*len(fx.Closure)+1 {
		t.Errorf("only %d distinct files requested", len(failures))
	}

	// With fewer attempts than failures the error says what happened.
	mu.Lock()
	clear(failures)
	mu.Unlock()
	_, err = fetchInto(t, t.TempDir(), fetch.Options{
		Substituters: []string{url},
		TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
		Retry:        fetch.RetryPolicy{Attempts: 2, Backoff: time.Millisecond},
	}, fx.Root)
	if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "after 2 attempts") {
		t.Errorf("exhausted retries: %v", err)
	}
}

// TestSecondCache: the first cache (higher priority) lacks everything
// (HTTP 404), the second has it.
func TestSecondCache(t *testing.T) {
	fx, key, caches := fixture(t)
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "nix-cache-info"), []byte("StoreDir: /nix/store\nPriority: 10\n"), 0o644)
	first := nixtest.Serve(t, empty, nil)
	second := nixtest.Serve(t, caches["xz"], nil)
	root := t.TempDir()
	res, err := fetchInto(t, root, fetch.Options{
		Substituters: []string{second + "?priority=50", first},
		TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
	}, fx.Root)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Fetched) != len(fx.Closure) {
		t.Errorf("fetched %d of %d", len(res.Fetched), len(fx.Closure))
	}
	nixtest.Verify(t, root)

	// A cache for another store directory is refused by name.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "nix-cache-info"), []byte("StoreDir: /gnu/store\n"), 0o644)
	_, err = fetchInto(t, t.TempDir(), fetch.Options{Substituters: []string{"file://" + other}}, fx.Root)
	if err == nil || !strings.Contains(err.Error(), `StoreDir is "/gnu/store"`) {
		t.Errorf("foreign StoreDir: %v", err)
	}
}
