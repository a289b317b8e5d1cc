package fetch_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestClosureLimits: a closure over MaxNarBytes or MaxPaths (summed from
// the signed narinfos of the paths not yet valid) is refused after the
// narinfos are read and before any NAR is requested; at the limits it is
// fetched; once valid, it costs nothing against them.
func TestClosureLimits(t *testing.T) {
	fx, key, caches := fixture(t)
	dir := caches["xz"]
	// What Nix signed: the closure's NarSize sum, from its narinfos.
	total := closureNarSize(t, dir, fx.Closure)
	paths := len(fx.Closure)
	var narGets, narinfoGets atomic.Int64
	url := nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasPrefix(r.URL.Path, "/nar/"):
				narGets.Add(1)
			case strings.HasSuffix(r.URL.Path, ".narinfo"):
				narinfoGets.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	opts := func(bytes int64, n int) fetch.Options {
		return fetch.Options{Substituters: []string{url}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)},
			MaxNarBytes: bytes, MaxPaths: n}
	}

	for _, c := range []struct {
		name  string
		bytes int64
		paths int
		want  string
	}{
		{"bytes", total - 1, 0, fmt.Sprintf("bytes of NARs not yet in the store (%d paths counted), more than the limit of %d: closure too large", paths, total-1)},
		{"paths", 0, paths - 1, fmt.Sprintf("needs more paths not yet in the store than the limit of %d: closure too large", paths-1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			narGets.Store(0)
			narinfoGets.Store(0)
			root := t.TempDir()
			_, err := fetchInto(t, root, opts(c.bytes, c.paths), fx.Root)
			if !errors.Is(err, fetch.ErrTooLarge) || fetch.ErrorKind(err) != fetchapi.KindTooLarge {
				t.Fatalf("err %v (kind %q), want ErrTooLarge", err, fetch.ErrorKind(err))
			}
			if !strings.HasPrefix(err.Error(), "the closure of "+fx.Root+" needs ") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q\nwant it to name %s and say %q", err, fx.Root, c.want)
			}
			if n := narGets.Load(); n != 0 {
				t.Errorf("%d NAR requests before the refusal", n)
			}
			if narinfoGets.Load() == 0 {
				t.Error("refused without reading a narinfo")
			}
			st, err := store.Open(context.Background(), root)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			valid, err := st.ValidSubset(context.Background(), []storepath.Path{mustPath(t, fx.Root)})
			if err != nil || valid[mustPath(t, fx.Root)] {
				t.Errorf("valid after the refusal: %v, %v", valid, err)
			}
			for _, abs := range fx.Closure {
				if _, err := os.Lstat(filepath.Join(root, abs)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s in the store after the refusal: %v", abs, err)
				}
			}
		})
	}

	// At the limits: fetched, every NAR once; then valid, it needs nothing.
	narGets.Store(0)
	root := t.TempDir()
	res, err := fetchInto(t, root, opts(total, paths), fx.Root)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Fetched) != paths || narGets.Load() != int64(paths) {
		t.Errorf("fetched %d paths with %d NAR requests, want %d", len(res.Fetched), narGets.Load(), paths)
	}
	nixtest.Verify(t, root)
	if _, err := fetchInto(t, root, opts(1, 1), fx.Root); err != nil {
		t.Errorf("valid closure under a 1-byte limit: %v", err)
	}
}

// TestClosureLimitsCountWith: paths given in BoundAlso (a pod's other
// path lists) count against the limits with the fetched closure, each
// path once, and are not fetched; one no cache has is not counted.
func TestClosureLimitsCountWith(t *testing.T) {
	fx, key, caches := fixture(t)
	dir := caches["xz"]
	// narSize is abs's signed NarSize if it refers to nothing else, else -1.
	narSize := func(abs string) int64 {
		ni := cachedNarInfo(t, dir, abs)
		if len(ni.References) > 0 && !(len(ni.References) == 1 && ni.References[0].Absolute() == abs) {
			return -1
		}
		return int64(ni.NarSize)
	}
	// A path of the closure that refers to nothing else: its closure is itself.
	var leaf string
	var leafSize, total int64
	for _, abs := range fx.Closure {
		if n := narSize(abs); n >= 0 && leaf == "" && abs != fx.Root {
			leaf, leafSize = abs, n
		}
	}
	if leaf == "" {
		t.Fatal("the fixture has no leaf path")
	}
	total = closureNarSize(t, dir, fx.Closure)
	var narGets atomic.Int64
	url := nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				narGets.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	opts := func(bytes int64, also ...string) fetch.Options {
		o := fetch.Options{Substituters: []string{url}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}, MaxNarBytes: bytes}
		for _, abs := range also {
			o.BoundAlso = append(o.BoundAlso, mustPath(t, abs))
		}
		return o
	}

	// The leaf alone is within the limit; with the root counted, the
	// pod's closure is not: refused, nothing downloaded.
	root := t.TempDir()
	_, err := fetchInto(t, root, opts(total-1, fx.Root), leaf)
	if !errors.Is(err, fetch.ErrTooLarge) {
		t.Fatalf("leaf counted with the root under %d bytes (total %d): %v, want ErrTooLarge", total-1, total, err)
	}
	want := fmt.Sprintf("the closure of %s together with the 1 other paths it is counted with (%s) needs at least", leaf, fx.Root)
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q\nwant prefix %q", err, want)
	}
	if n := narGets.Load(); n != 0 {
		t.Errorf("%d NAR requests before the refusal", n)
	}

	// At the limit: only the leaf is fetched.
	res, err := fetchInto(t, root, opts(total, fx.Root), leaf)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Fetched) != 1 || res.Fetched[0].Absolute() != leaf || narGets.Load() != 1 {
		t.Errorf("fetched %v with %d NAR requests, want only %s (%d bytes)", res.Fetched, narGets.Load(), leaf, leafSize)
	}
	nixtest.Verify(t, root)

	// A counted path no cache has is left out: its own fetch reports it.
	missing := filepath.Join(filepath.Dir(leaf), "00000000000000000000000000000000-missing")
	narGets.Store(0)
	if _, err := fetchInto(t, t.TempDir(), opts(leafSize, missing), leaf); err != nil {
		t.Errorf("counting a path no cache has: %v", err)
	}
}

// cachedNarInfo reads the narinfo of store path abs from cache dir.
func cachedNarInfo(t *testing.T, dir, abs string) *narinfo.NarInfo {
	t.Helper()
	hash, _, _ := strings.Cut(filepath.Base(abs), "-")
	data, err := os.ReadFile(filepath.Join(dir, hash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.ParseBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

// closureNarSize sums the signed NarSize of paths, from cache dir.
func closureNarSize(t *testing.T, dir string, paths []string) int64 {
	t.Helper()
	var total int64
	for _, abs := range paths {
		total += int64(cachedNarInfo(t, dir, abs).NarSize)
	}
	return total
}
