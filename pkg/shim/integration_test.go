package shim_test

// Integration tests: real containerd 2.3 with CRI, Debian's runc and CNI
// plugins, crictl, the storepkg shim built from this tree, and closures
// built by real Nix served from a signed binary cache on 127.0.0.1.

import (
	"crypto/ed25519"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
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
		if out, err := exec.Command("go", "build", "-o", dir+"/", critest.ShimPackage, critest.CLIPackage).CombinedOutput(); err != nil {
			t.Fatalf("go build %s %s: %v\n%s", critest.ShimPackage, critest.CLIPackage, err, out)
		}
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

// TestContainerLifecycle: a dynamically linked program whose interpreter
// and libraries live in other store paths runs from its closure; the view
// shows exactly the closure, read-only; CRI's files, a host volume and
// exec with PATH work; after removal nothing of the container is left.
func TestContainerLifecycle(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	pod := env.PodConfig("lifecycle", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	volume := t.TempDir()
	os.Chmod(volume, 0o777)
	ctr := env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "storepkg"})
	ctr["mounts"] = []any{critest.Mount(volume, "/data", false)}
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from storepkg, linked dynamically", 30*time.Second)

	// The view holds exactly the closure; PATH leads to it.
	assertClosureView(t, env, id, fx)
	// Read-only: neither the store directory nor a path in it can be written.
	for _, target := range []string{"/nix/store/new-file", fx.Hello + "/new-file"} {
		if out, err := env.ExecErr(id, "touch", target); err == nil {
			t.Errorf("touch %s succeeded: %s", target, out)
		}
	}
	if out := env.Exec(t, id, "cat", "/etc/hosts"); !strings.Contains(out, "localhost") {
		t.Errorf("/etc/hosts: %q", out)
	}
	env.Exec(t, id, "cat", "/etc/resolv.conf")
	if out := env.Exec(t, id, "cat", "/etc/hostname"); !strings.Contains(out, "lifecycle") {
		t.Errorf("/etc/hostname: %q", out)
	}
	env.Exec(t, id, "sh", "-c", "echo written-inside > /data/file")
	if b, err := os.ReadFile(filepath.Join(volume, "file")); err != nil || string(b) != "written-inside\n" {
		t.Errorf("volume: %q, %v", b, err)
	}

	assertRoots(t, env, 2, "while running (one per root path)")
	env.Stop(t, id)
	env.Rm(t, id)
	env.StopPod(t, podID)
	env.RmPod(t, podID)

	assertNothingLeft(t, env, id)
	assertRoots(t, env, 0, "after rm")
	out, err := nixtest.Cmd("nix-store", append([]string{"--store", nixtest.StoreURI(env.StoreRoot), "--check-validity"}, fx.Closure...)...).CombinedOutput()
	if err != nil {
		t.Errorf("store paths no longer valid after rm: %v\n%s", err, out)
	}
	nixtest.Verify(t, env.StoreRoot)
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

// TestTwoClosuresAndMixedPod: two containers on different closures see
// only their own; a plain image container runs beside a storepkg one.
func TestTwoClosuresAndMixedPod(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	annotations := map[string]string{
		"storepkg.dev/paths.full":  fx.Hello + "," + fx.Tools,
		"storepkg.dev/paths.tools": fx.Tools,
	}
	pod := env.PodConfig("two", "default", annotations)
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	ids := map[string]string{}
	for name, cmd := range map[string][]string{
		"full":  {"hello-dyn", "full"},
		"tools": {"sleep", "3600"},
		"plain": {"sleep", "3600"},
	} {
		image := critest.PauseImage
		if name == "plain" {
			image = critest.BusyboxImage
		}
		id, err := env.CreateContainer(t, podID, env.ContainerConfig(name, image, cmd), pod)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		env.Start(t, id)
		ids[name] = id
	}
	env.WaitLogs(t, ids["full"], "hello from full", 30*time.Second)

	toolsView := strings.Fields(env.Exec(t, ids["tools"], "ls", "/nix/store"))
	slices.Sort(toolsView)
	wantTools := baseNames(nixtest.QueryClosure(t, fx.Store, fx.Tools))
	if !slices.Equal(toolsView, wantTools) {
		t.Errorf("tools container sees %v, want %v", toolsView, wantTools)
	}
	// The plain container is its image: busybox at /bin, no /nix.
	if out, err := env.ExecErr(ids["plain"], "ls", "/nix"); err == nil {
		t.Errorf("plain container has /nix: %s", out)
	}
	if out := env.Exec(t, ids["plain"], "echo", "plain"); out != "plain\n" {
		t.Errorf("plain container: %q", out)
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	for _, id := range ids {
		assertNothingLeft(t, env, id)
	}
}

// TestBadAnnotations: each mistake fails the container's start with a
// message naming the annotation or path and the cause, and leaves nothing.
func TestBadAnnotations(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)

	// A second cache, signed by a key the node does not trust.
	_, priv, _ := ed25519.GenerateKey(nil)
	untrustedKey := narinfo.SecretKey{Name: "stranger-1", Key: priv}
	untrustedDir := filepath.Join(t.TempDir(), "untrusted")
	w, err := cachetest.NewWriter(untrustedDir, untrustedKey, false)
	if err != nil {
		t.Fatal(err)
	}
	strangerRoot, _, err := w.Synthetic("stranger", 3)
	if err != nil {
		t.Fatal(err)
	}
	untrusted := nixtest.Serve(t, untrustedDir, nil)
	env := startEnv(t, []string{url, untrusted}, []string{fixture.key.Public})

	unknown := cachetest.MakePath("nowhere", "missing-1.0").Absolute()
	for _, c := range []struct {
		name, value, want string
		syntax            bool // refused by the annotation parser, before any fetch
	}{
		{"not a store path", "/usr/bin/env", "not in /nix/store", true},
		{"dotdot", "/nix/store/../etc/passwd", "names a file inside a store path", true},
		{"bad hash chars", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", "bad hash character", true},
		{"unknown path", unknown, unknown + ": not found in any cache", false},
		{"untrusted signature", strangerRoot.Absolute(), strangerRoot.Absolute() + ": no trusted signature (signed by stranger-1, trusted: shim-test-1)", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := env.PodConfig("bad", "default", paths(c.value))
			podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
			id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "1"}), pod)
			if err != nil {
				t.Fatal(err)
			}
			out, err := env.CrictlErr("start", id)
			if err == nil {
				t.Fatalf("start succeeded: %s", out)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("start error does not say %q:\n%v", c.want, err)
			}
			if c.syntax && (!strings.Contains(err.Error(), "annotation storepkg.dev/paths: invalid store path") || !strings.Contains(err.Error(), "InvalidArgument")) {
				t.Errorf("start error does not name the annotation or is not InvalidArgument:\n%v", err)
			}
			env.Rm(t, id)
			env.StopPod(t, podID)
			env.RmPod(t, podID)
			assertNothingLeft(t, env, id)
			if entries, _ := os.ReadDir(filepath.Join(env.StoreRoot, "nix/var/nix/gcroots/storepkg")); len(entries) != 0 {
				t.Errorf("GC roots left: %v", entries)
			}
		})
	}
}

// TestPrefetchSurvivesCancelledStart: the pod's closure starts downloading
// at sandbox creation; a start that gives up early (kubelet's deadline)
// does not stop it, and the retried container joins it: every NAR is
// downloaded once.
func TestPrefetchSurvivesCancelledStart(t *testing.T) {
	setup(t)
	url, gets, setDelay := serveCache(t)
	setDelay(700 * time.Millisecond)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	pod := env.PodConfig("prefetch", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	ctr := env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "retry"})
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := env.CrictlErr("--timeout", "1s", "start", id); err == nil {
		t.Fatalf("start within 1s succeeded, the test needs a slower cache: %s", out)
	}
	if n := len(gets()); n == len(fx.Closure) {
		t.Logf("all %d NARs already requested when the first start gave up", n)
	}
	// kubelet's retry: a new attempt of the container.
	ctr["metadata"] = map[string]any{"name": "app", "attempt": 1}
	id2, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id2)
	env.WaitLogs(t, id2, "hello from retry", 30*time.Second)
	counts := gets()
	if len(counts) != len(fx.Closure) {
		t.Errorf("%d NARs downloaded, closure has %d", len(counts), len(fx.Closure))
	}
	for nar, n := range counts {
		if n != 1 {
			t.Errorf("%s downloaded %d times", nar, n)
		}
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
}

// TestPodRemovedDuringFetch: a pod removed while its closure is still
// downloading stops its fetch child; its GC roots go and the store keeps
// no partial path.
func TestPodRemovedDuringFetch(t *testing.T) {
	setup(t)
	url, gets, setDelay := serveCache(t)
	setDelay(5 * time.Second)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	pod := env.PodConfig("removed", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	var child int
	for deadline := time.Now().Add(10 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		child = fetchChild(env.StoreRoot)
	}
	if child == 0 {
		t.Fatal("no storepkg fetch child running after runp")
	}
	for deadline := time.Now().Add(10 * time.Second); len(gets()) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
	}
	assertRoots(t, env, 2, "while fetching (one per root path, made before the download)")
	start := time.Now()
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	t.Logf("stopp+rmp during the fetch: %v", time.Since(start).Round(time.Millisecond))
	if err := syscall.Kill(child, 0); err == nil {
		t.Errorf("fetch child %d still runs after the pod was removed", child)
	}
	assertRoots(t, env, 0, "after the pod was removed")
	for _, e := range nixtest.StoreEntries(t, env.StoreRoot) {
		if strings.HasPrefix(e, ".") || strings.HasSuffix(e, ".lock") {
			continue
		}
		if out, err := nixtest.Cmd("nix-store", "--store", nixtest.StoreURI(env.StoreRoot), "--check-validity", "/nix/store/"+e).CombinedOutput(); err != nil {
			t.Errorf("left in the store, not valid: %s (%s)", e, strings.TrimSpace(string(out)))
		}
	}
	nixtest.Verify(t, env.StoreRoot)
}

// fetchChild returns the PID of a running `storepkg fetch --json` for the
// store under root, or 0.
func fetchChild(root string) int {
	want := "fetch\x00--json\x00--root\x00" + root + "\x00"
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline")); err == nil && strings.Contains(string(b), want) {
			return pid
		}
	}
	return 0
}

// TestLargeClosure: a container whose closure has 2,000 paths starts and
// sees all of them.
func TestLargeClosure(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "synthetic-1", Key: priv}
	dir := filepath.Join(t.TempDir(), "synthetic")
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	root, all, err := w.Synthetic("large", 2000)
	if err != nil {
		t.Fatal(err)
	}
	synthetic := nixtest.Serve(t, dir, nil)
	env := startEnv(t, []string{url, synthetic}, []string{fixture.key.Public, key.Public().String()})

	pod := env.PodConfig("large", "default", paths(root.Absolute(), fixture.fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	env.Start(t, id)
	t.Logf("create+start with %d paths (fetch included): %v", len(all), time.Since(start))
	toolsClosure := nixtest.QueryClosure(t, fixture.fx.Store, fixture.fx.Tools)
	out := strings.TrimSpace(env.Exec(t, id, "sh", "-c", "ls /nix/store | wc -l"))
	if want := len(all) + len(toolsClosure); out != strconv.Itoa(want) {
		t.Errorf("%s paths visible, want %d", out, want)
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
}
