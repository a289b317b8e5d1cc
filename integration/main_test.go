// Package integration holds storepkg's whole-system tests and benchmarks:
// real containerd (2.3, and every minor from 1.7 in
// containerd_matrix_test.go) with CRI, Debian's runc and CNI plugins,
// crictl, the shim, CLI and node agent built from this tree, and
// closures built by real Nix served from signed binary caches on
// 127.0.0.1. One scenario per file; this file holds the shared
// fixture; bench_*_test.go are the benchmarks `make bench` runs.
package integration

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/store"
)

// fixture is built once per test binary.
var fixture struct {
	once   sync.Once
	failed bool
	dir    string
	fx     *nixtest.DynamicFixture
	key    nixtest.Key
	cache  string
	shim   string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.dir != "" {
		store.RemoveTree(fixture.dir)
	}
	os.Exit(code)
}

func setup(t testing.TB) {
	t.Helper()
	critest.Require(t)
	nixtest.Require(t, "nix", "nix-build", "gcc")
	fixture.once.Do(func() {
		fixture.failed = true
		dir, err := os.MkdirTemp("", "storepkg-shim-test-")
		if err != nil {
			t.Fatal(err)
		}
		fixture.dir = dir
		fixture.fx = nixtest.BuildDynamicClosure(t, dir)
		fixture.key = nixtest.GenerateKey(t, dir, "shim-test-1")
		fixture.cache = filepath.Join(dir, "cache")
		to := "file://" + fixture.cache + "?compression=zstd&secret-key=" + fixture.key.SecretFile
		nixtest.Run(t, "nix", "copy", "--store", nixtest.StoreURI(fixture.fx.Store), "--to", to, fixture.fx.Hello, fixture.fx.Tools)
		// The shim and, beside it, the storepkg CLI it runs to fetch.
		fixture.shim = filepath.Join(dir, "containerd-shim-storepkg-v1")
		critest.BuildProduct(t, dir, critest.ShimPackage, critest.CLIPackage)
		fixture.failed = false
	})
	if fixture.failed {
		t.Fatal("building the shim test fixture failed (see the first failing test)")
	}
}

// serveCache serves the main cache on 127.0.0.1, counting NAR downloads.
func serveCache(t testing.TB) (url string, gets func() map[string]int, setDelay func(time.Duration)) {
	var mu sync.Mutex
	counts := map[string]int{}
	var delay time.Duration
	url = nixtest.Serve(t, fixture.cache, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				mu.Lock()
				counts[r.URL.Path]++
				d := delay
				mu.Unlock()
				time.Sleep(d)
			}
			h.ServeHTTP(w, r)
		})
	})
	gets = func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return maps(counts)
	}
	setDelay = func(d time.Duration) { mu.Lock(); delay = d; mu.Unlock() }
	return url, gets, setDelay
}

func maps(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func startEnv(t *testing.T, substituters []string, keys []string) *critest.Env {
	t.Helper()
	return critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      substituters,
			"TrustedPublicKeys": keys,
		},
	})
}

func paths(ps ...string) map[string]string {
	return map[string]string{"storepkg.dev/paths": strings.Join(ps, " ")}
}

func baseNames(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = filepath.Base(p)
	}
	slices.Sort(out)
	return out
}

// assertNothingLeft: no mount and no state directory mentions the container.
func assertNothingLeft(t *testing.T, env *critest.Env, id string) {
	t.Helper()
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mountinfo), id) {
		t.Errorf("mountinfo still mentions container %s", id)
	}
	filepath.Walk(env.StateDir, func(p string, _ os.FileInfo, err error) error {
		if err == nil && strings.Contains(p, id) {
			t.Errorf("state left: %s", p)
		}
		return nil
	})
}

// assertClosureView checks a running container on fx's hello and tools:
// /nix/store holds exactly the closure, and exec's PATH starts with the
// root paths' bin directories.
func assertClosureView(t *testing.T, env *critest.Env, id string, fx *nixtest.DynamicFixture) {
	t.Helper()
	got := strings.Fields(env.Exec(t, id, "ls", "/nix/store"))
	slices.Sort(got)
	if want := baseNames(fx.Closure); !slices.Equal(got, want) {
		t.Errorf("/nix/store in the container:\n%v\nwant the closure:\n%v", got, want)
	}
	if out := env.Exec(t, id, "sh", "-c", "echo $PATH"); !strings.HasPrefix(out, fx.Hello+"/bin:"+fx.Tools+"/bin") {
		t.Errorf("PATH in exec: %q", out)
	}
}

// assertRoots checks the store's storepkg GC roots number want; with
// none wanted, no owner record may be left either.
func assertRoots(t *testing.T, env *critest.Env, want int, when string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(env.StoreRoot, "nix/var/nix/gcroots/storepkg"))
	if len(entries) != want {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("%d GC roots %s, want %d: %v", len(entries), when, want, names)
	}
	if want == 0 {
		if entries, _ := os.ReadDir(filepath.Join(env.StoreRoot, "nix/var/storepkg/owners")); len(entries) != 0 {
			t.Errorf("GC root owner records left %s: %v", when, entries)
		}
	}
}
