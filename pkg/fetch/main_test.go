package fetch_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// shared is built once per test binary: Nix builds the closure and writes
// one signed cache per compression.
var shared struct {
	once   sync.Once
	dir    string
	fx     *nixtest.Fixture
	key    nixtest.Key
	caches map[string]string // compression -> cache dir
	failed bool
}

var compressions = []string{"xz", "zstd", "bzip2", "br", "none"}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		store.RemoveTree(shared.dir)
	}
	os.Exit(code)
}

// fixture returns the shared Nix-built closure and caches.
func fixture(t *testing.T) (*nixtest.Fixture, nixtest.Key, map[string]string) {
	t.Helper()
	nixtest.Require(t, "nix", "nix-build", "nix-store")
	shared.once.Do(func() {
		shared.failed = true
		dir, err := os.MkdirTemp("", "storepkg-fetch-test-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		shared.fx = nixtest.BuildClosure(t, dir)
		shared.key = nixtest.GenerateKey(t, dir, "test-cache-1")
		shared.caches = map[string]string{}
		for _, c := range compressions {
			cdir := filepath.Join(dir, "cache-"+c)
			shared.fx.WriteCache(t, cdir, c, shared.key)
			shared.caches[c] = cdir
		}
		shared.failed = false
	})
	if shared.failed {
		t.Fatal("building the Nix fixture failed (see the first failing test)")
	}
	return shared.fx, shared.key, shared.caches
}

// copyCache makes a private, writable copy of a cache so a test can tamper with it.
func copyCache(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "cache")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

func mustPath(t *testing.T, abs string) storepath.Path {
	t.Helper()
	p, err := storepath.Parse(abs)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func publicKey(t *testing.T, k nixtest.Key) narinfo.PublicKey {
	t.Helper()
	pk, err := narinfo.ParsePublicKey(k.Public)
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// fetchInto runs one Fetch of root into a fresh store under storeRoot.
func fetchInto(t *testing.T, storeRoot string, opts fetch.Options, roots ...string) (*fetchapi.Result, error) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, storeRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := fetch.New(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	var paths []storepath.Path
	for _, r := range roots {
		paths = append(paths, mustPath(t, r))
	}
	return f.Fetch(ctx, paths)
}

func equalStrings(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }
