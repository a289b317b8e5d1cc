package fetchexec_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/tmpfstest"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

var cli struct {
	once sync.Once
	path string
	err  error
}

// storepkgCLI builds cmd/storepkg, the child fetchexec runs.
func storepkgCLI(t *testing.T) string {
	t.Helper()
	cli.once.Do(func() {
		dir, err := os.MkdirTemp("", "fetchexec-cli-")
		if err != nil {
			cli.err = err
			return
		}
		cli.path = filepath.Join(dir, "storepkg")
		if out, err := exec.Command("go", "build", "-o", cli.path, "github.com/storepkg/storepkg/cmd/storepkg").CombinedOutput(); err != nil {
			cli.err = errors.New("go build cmd/storepkg: " + err.Error() + "\n" + string(out))
		}
	})
	if cli.err != nil {
		t.Fatal(cli.err)
	}
	return cli.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cli.path != "" {
		os.RemoveAll(filepath.Dir(cli.path))
	}
	os.Exit(code)
}

type fixture struct {
	fx    *nixtest.Fixture
	key   nixtest.Key
	cache string
	root  storepath.Path
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	nixtest.Require(t, "nix", "nix-build", "nix-store")
	dir := t.TempDir()
	f := &fixture{fx: nixtest.BuildClosure(t, dir), key: nixtest.GenerateKey(t, dir, "fetchexec-test-1"), cache: filepath.Join(dir, "cache")}
	f.fx.WriteCache(t, f.cache, "zstd", f.key)
	var err error
	if f.root, err = storepath.Parse(f.fx.Root); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRunRealCLI: the real storepkg CLI substitutes a Nix-built closure
// from a signed cache over HTTP, makes the GC roots, reports progress and
// the closure; Nix agrees with the store it wrote.
func TestRunRealCLI(t *testing.T) {
	f := newFixture(t)
	url := nixtest.Serve(t, f.cache, nil)
	storeRoot := t.TempDir()
	var (
		mu       sync.Mutex
		progress []fetchapi.Progress
		logged   []string
	)
	req := fetchexec.Request{
		Binary:            storepkgCLI(t),
		StoreRoot:         storeRoot,
		Substituters:      []string{url},
		TrustedPublicKeys: []string{f.key.Public},
		Timeout:           time.Minute,
		Paths:             []storepath.Path{f.root},
		GCRoots:           []fetchexec.GCRoot{{Name: "pod-1-" + f.root.HashPart(), Path: f.root}},
		Progress:          func(p fetchapi.Progress) { mu.Lock(); progress = append(progress, p); mu.Unlock() },
		Log:               func(l string) { mu.Lock(); logged = append(logged, l); mu.Unlock() },
	}
	res, err := fetchexec.Run(context.Background(), req)
	if err != nil {
		t.Fatalf("Run: %v\nchild log: %s", err, strings.Join(logged, "\n"))
	}
	var got []string
	for _, p := range res.Closure {
		got = append(got, p.Absolute())
	}
	want := slices.Clone(f.fx.Closure)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("closure:\n got %v\nwant %v", got, want)
	}
	if len(res.Fetched) != len(want) || res.Downloaded <= 0 || res.CacheBytes[url] != res.Downloaded {
		t.Errorf("fetched %d of %d, downloaded %d, by cache %v", len(res.Fetched), len(want), res.Downloaded, res.CacheBytes)
	}
	if len(progress) == 0 {
		t.Error("no progress reported")
	} else if last := progress[len(progress)-1]; last.PathsDone != last.PathsTotal || last.PathsTotal != len(want) {
		t.Errorf("last progress %+v, want all %d paths done", last, len(want))
	}
	link := filepath.Join(storeRoot, "nix/var/nix/gcroots/storepkg", "pod-1-"+f.root.HashPart())
	if target, err := os.Readlink(link); err != nil || target != f.fx.Root {
		t.Errorf("GC root %s -> %q, %v", link, target, err)
	}
	nixtest.Verify(t, storeRoot)

	// Warm: nothing to fetch, the same closure.
	req.Progress, req.Log = nil, nil
	res2, err := fetchexec.Run(context.Background(), req)
	if err != nil || len(res2.Fetched) != 0 || !slices.Equal(res2.Closure, res.Closure) {
		t.Errorf("warm run: %+v, %v", res2, err)
	}
}

// TestRunFailures: the child's errors arrive as Failures with their kind
// and the path at fault; a cancelled run stops the child, which leaves
// no partial store path.
func TestRunFailures(t *testing.T) {
	f := newFixture(t)
	bin := storepkgCLI(t)
	url := nixtest.Serve(t, f.cache, nil)
	missing := storepath.Path("00000000000000000000000000000000-not-in-any-cache")
	run := func(req fetchexec.Request) *fetchapi.Failure {
		t.Helper()
		req.Binary, req.StoreRoot = bin, t.TempDir()
		res, err := fetchexec.Run(context.Background(), req)
		var fail *fetchapi.Failure
		if !errors.As(err, &fail) {
			t.Fatalf("Run: %+v, %v; want a *Failure", res, err)
		}
		return fail
	}

	fail := run(fetchexec.Request{Substituters: []string{url}, TrustedPublicKeys: []string{f.key.Public}, Paths: []storepath.Path{missing}})
	if fail.Kind != fetchapi.KindNotFound || fail.Path != missing.Absolute() || !strings.Contains(fail.Message, "not found") {
		t.Errorf("missing path: %+v", fail)
	}
	stranger := nixtest.GenerateKey(t, t.TempDir(), "stranger-1")
	fail = run(fetchexec.Request{Substituters: []string{url}, TrustedPublicKeys: []string{stranger.Public}, Paths: []storepath.Path{f.root}})
	if fail.Kind != fetchapi.KindUntrusted || !strings.Contains(fail.Message, "no trusted signature") {
		t.Errorf("untrusted: %+v", fail)
	}
	fail = run(fetchexec.Request{Substituters: []string{url}, TrustedPublicKeys: []string{"nocolon"}, Paths: []storepath.Path{f.root}})
	if fail.Kind != fetchapi.KindInvalidArgument || !strings.Contains(fail.Message, "--trusted-public-key") {
		t.Errorf("bad key: %+v", fail)
	}
	// The limits reach the child as --max-nar-bytes and --max-paths.
	fail = run(fetchexec.Request{Substituters: []string{url}, TrustedPublicKeys: []string{f.key.Public}, Paths: []storepath.Path{f.root}, MaxNarBytes: 1})
	if fail.Kind != fetchapi.KindTooLarge || !strings.Contains(fail.Message, "the closure of "+f.root.Absolute()+" needs at least") || !strings.Contains(fail.Message, "more than the limit of 1:") {
		t.Errorf("over --max-nar-bytes: %+v", fail)
	}
	fail = run(fetchexec.Request{Substituters: []string{url}, TrustedPublicKeys: []string{f.key.Public}, Paths: []storepath.Path{f.root}, MaxPaths: 1})
	if fail.Kind != fetchapi.KindTooLarge || !strings.Contains(fail.Message, "than the limit of 1:") {
		t.Errorf("over --max-paths: %+v", fail)
	}

	// Cancelled while NARs are held back by the cache: the child gets
	// SIGTERM, stops, and the store has no partial path.
	slow := nixtest.Serve(t, f.cache, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				time.Sleep(3 * time.Second)
			}
			h.ServeHTTP(w, r)
		})
	})
	storeRoot := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 1)
	req := fetchexec.Request{
		Binary: bin, StoreRoot: storeRoot, Substituters: []string{slow}, TrustedPublicKeys: []string{f.key.Public},
		Paths: []storepath.Path{f.root},
		Progress: func(fetchapi.Progress) {
			select {
			case started <- struct{}{}:
			default:
			}
		},
	}
	go func() { <-started; cancel() }()
	begin := time.Now()
	_, err := fetchexec.Run(ctx, req)
	var cf *fetchapi.Failure
	if !errors.As(err, &cf) || cf.Kind != fetchapi.KindCanceled {
		t.Errorf("cancelled run: %v (%+v), want kind %s", err, cf, fetchapi.KindCanceled)
	}
	if d := time.Since(begin); d > 2500*time.Millisecond {
		t.Errorf("cancelled run took %v: the child did not stop on SIGTERM", d)
	}
	for _, e := range nixtest.StoreEntries(t, storeRoot) {
		if !strings.HasSuffix(e, ".lock") && !strings.HasPrefix(e, ".") {
			out, err := nixtest.Cmd("nix-store", "--store", nixtest.StoreURI(storeRoot), "--check-validity", "/nix/store/"+e).CombinedOutput()
			if err != nil {
				t.Errorf("left in the store after cancel, not valid: %s (%s)", e, strings.TrimSpace(string(out)))
			}
		}
	}
}

// TestRunBrokenChild: a child that exits without a report, or writes
// something else, is an error that says so (real programs standing in
// for a crashed or wrong storepkg binary).
func TestRunBrokenChild(t *testing.T) {
	p := storepath.Path("7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	for _, c := range []struct{ bin, want string }{
		{"/bin/false", "ended without a result: exit status 1"},
		{"/bin/echo", "ended without a result: reading the report"},
		{"/nonexistent/storepkg", "starting /nonexistent/storepkg"},
	} {
		_, err := fetchexec.Run(context.Background(), fetchexec.Request{Binary: c.bin, StoreRoot: "/", Paths: []storepath.Path{p}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.bin, err, c.want)
		}
	}
}

// TestRunFailureKinds: the real child reports what went wrong as a kind
// of its own, which the shim maps to CRI codes: a store on a full
// filesystem (a small tmpfs), a NAR shorter than its signed NarSize (the
// cache's complete file, compressed correctly, so that only the NAR size
// check catches it), and a cache that answers 503 to everything.
func TestRunFailureKinds(t *testing.T) {
	f := newFixture(t)
	bin := storepkgCLI(t)
	run := func(t *testing.T, storeRoot, url string) *fetchapi.Failure {
		t.Helper()
		res, err := fetchexec.Run(context.Background(), fetchexec.Request{
			Binary: bin, StoreRoot: storeRoot, Substituters: []string{url},
			TrustedPublicKeys: []string{f.key.Public}, Timeout: time.Minute, Paths: []storepath.Path{f.root},
		})
		var fail *fetchapi.Failure
		if !errors.As(err, &fail) {
			t.Fatalf("Run: %+v, %v; want a *Failure", res, err)
		}
		t.Logf("%s: %s", fail.Kind, fail.Message)
		return fail
	}
	noLeftovers := func(t *testing.T, storeRoot string) {
		t.Helper()
		for _, e := range nixtest.StoreEntries(t, storeRoot) {
			if strings.HasSuffix(e, ".storepkg-tmp") {
				t.Errorf("temporary directory %s left in the store", e)
			}
		}
	}

	t.Run("full filesystem", func(t *testing.T) {
		tmpfstest.Require(t)
		url := nixtest.Serve(t, f.cache, nil)
		storeRoot := tmpfstest.Mount(t, 2<<20) // the fixture's data path alone has 5 MiB
		fail := run(t, storeRoot, url)
		if fail.Kind != fetchapi.KindNoSpace || !strings.Contains(fail.Message, "no space left on device") || fail.Path == "" {
			t.Errorf("full store: %+v, want kind %s naming the path and the cause", fail, fetchapi.KindNoSpace)
		}
		noLeftovers(t, storeRoot)
	})

	t.Run("truncated NAR", func(t *testing.T) {
		cache := filepath.Join(t.TempDir(), "cache")
		if err := os.CopyFS(cache, os.DirFS(f.cache)); err != nil {
			t.Fatal(err)
		}
		info := filepath.Join(cache, f.root.HashPart()+".narinfo")
		data, err := os.ReadFile(info)
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.ParseBytes(data)
		if err != nil || ni.Compression != "zstd" {
			t.Fatalf("narinfo: %+v, %v", ni, err)
		}
		compressed, err := os.ReadFile(filepath.Join(cache, ni.URL))
		if err != nil {
			t.Fatal(err)
		}
		dec, _ := zstd.NewReader(nil)
		nar, err := dec.DecodeAll(compressed, nil)
		dec.Close()
		if err != nil || uint64(len(nar)) != ni.NarSize {
			t.Fatalf("decoding %s: %d bytes, %v", ni.URL, len(nar), err)
		}
		// A complete, well-formed zstd file of the NAR less its last 100
		// bytes; FileSize and FileHash are not signed.
		enc, _ := zstd.NewWriter(nil)
		short := enc.EncodeAll(nar[:len(nar)-100], nil)
		enc.Close()
		if err := os.WriteFile(filepath.Join(cache, ni.URL), short, 0o644); err != nil {
			t.Fatal(err)
		}
		fh := narinfo.Hash(sha256.Sum256(short))
		ni.FileHash, ni.FileSize = &fh, uint64(len(short))
		if err := os.WriteFile(info, []byte(ni.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		gets := 0
		url := nixtest.Serve(t, cache, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/"+ni.URL {
					mu.Lock()
					gets++
					mu.Unlock()
				}
				h.ServeHTTP(w, r)
			})
		})
		storeRoot := t.TempDir()
		fail := run(t, storeRoot, url)
		want := fmt.Sprintf("is shorter than its NarSize %d: got %d bytes", ni.NarSize, ni.NarSize-100)
		if fail.Kind != fetchapi.KindTruncated || !strings.Contains(fail.Message, want) ||
			fail.Path != f.root.Absolute() || fail.Cache != url {
			t.Errorf("truncated NAR: %+v, want kind %s, path %s, cache %s, saying %q", fail, fetchapi.KindTruncated, f.root.Absolute(), url, want)
		}
		if gets != 1 {
			t.Errorf("the short NAR was requested %d times: the same file is short again, no retry helps", gets)
		}
		noLeftovers(t, storeRoot)
	})

	t.Run("cache answers 503", func(t *testing.T) {
		var mu sync.Mutex
		requests := 0
		url := nixtest.Serve(t, f.cache, func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				requests++
				mu.Unlock()
				http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			})
		})
		fail := run(t, t.TempDir(), url)
		if fail.Kind != fetchapi.KindUnavailable || !strings.Contains(fail.Message, "503 Service Unavailable") ||
			!strings.Contains(fail.Message, url) || fail.Path != f.root.Absolute() {
			t.Errorf("503: %+v, want kind %s naming the path and the cache", fail, fetchapi.KindUnavailable)
		}
		if requests < 2 {
			t.Errorf("%d requests: the 503 was not retried", requests)
		}
	})
}
