package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
)

// TestFetchSlots: with MaxConcurrentFetches = 1, three pods on a slow
// cache fetch one at a time across their shims. The second pod's fetch
// says in its record that it waits for a slot, with no fetch child
// running for it, and its container starts once the first pod's fetch
// is done; a third pod removed while it waits leaves no process, no GC
// root, no queue ticket and no running record. The fetch child runs in
// its shim's cgroup (logged: docs/runtime.md, "Resource bounds").
func TestFetchSlots(t *testing.T) {
	setup(t)
	url, _, setDelay := serveCache(t)
	setDelay(8 * time.Second)
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":         []string{url},
			"TrustedPublicKeys":    []string{fixture.key.Public},
			"MaxConcurrentFetches": 1,
		},
	})
	fx := fixture.fx

	pod1 := env.PodConfig("first", "default", paths(fx.Hello))
	pod1ID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod1)
	var holder int
	for deadline := time.Now().Add(20 * time.Second); holder == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		holder = fetchChildWith(env.StoreRoot, "--slot-fd")
	}
	if holder == 0 {
		t.Fatal("no fetch child holds a slot after the first pod's runp")
	}
	logCgroups(t, env, pod1ID, holder)

	pod2 := env.PodConfig("second", "default", paths(fx.Tools))
	pod2ID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod2)
	waitRecord(t, env, pod2ID, "the second pod's fetch waits for a slot", func(r *fetchrecord.Record) bool {
		return r.State == fetchrecord.Fetching && r.WaitingForSlot == 1
	})
	if n := len(fetchChildren(env.StoreRoot)); n != 1 {
		t.Errorf("%d fetch children while one fetch runs and one waits, want 1", n)
	}

	pod3 := env.PodConfig("third", "default", paths(fx.Hello, fx.Tools))
	pod3ID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod3)
	waitRecord(t, env, pod3ID, "the third pod's fetch waits for a slot", func(r *fetchrecord.Record) bool {
		return r.WaitingForSlot == 1
	})
	shim3, err := env.ShimPID(pod3ID)
	if err != nil {
		t.Fatal(err)
	}
	env.StopPod(t, pod3ID)
	env.RmPod(t, pod3ID)
	if syscall.Kill(holder, 0) != nil {
		t.Fatal("the first pod's fetch ended before the third pod was removed: the test saw no wait")
	}
	for _, pid := range fetchChildren(env.StoreRoot) {
		if pid != holder {
			t.Errorf("fetch child %d runs beside the first pod's after the third pod was removed", pid)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(shim3, 0) == nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("the third pod's shim %d still runs", shim3)
			break
		}
	}
	for _, r := range readRecords(t, env.StatusDir) {
		if r.SandboxID == pod3ID && (r.State == fetchrecord.Fetching || r.Error == nil || r.Error.Kind != fetchapi.KindCanceled) {
			t.Errorf("the removed pod's record: state %s, error %+v; want failed, canceled", r.State, r.Error)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(env.StoreRoot, "nix/var/nix/gcroots/storepkg"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), pod3ID) {
			t.Errorf("GC root of the removed pod: %s", e.Name())
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(env.FetchSlotsDir, "queue")); len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("queue after the third pod left: %v, want the second pod's ticket alone", names)
	}

	// Both remaining pods run: the second once the first's fetch ends.
	for _, p := range []struct {
		id  string
		cfg map[string]any
		cmd []string
	}{{pod1ID, pod1, []string{"hello-dyn", "slots"}}, {pod2ID, pod2, []string{"sleep", "600"}}} {
		id, err := env.CreateContainer(t, p.id, env.ContainerConfig("app", critest.PauseImage, p.cmd), p.cfg)
		if err != nil {
			t.Fatal(err)
		}
		env.Start(t, id)
	}
	if holder := fetchChildWith(env.StoreRoot, "--slot-fd"); holder != 0 {
		t.Errorf("a fetch child %d still runs", holder)
	}
	if entries, _ := os.ReadDir(filepath.Join(env.FetchSlotsDir, "queue")); len(entries) != 0 {
		t.Errorf("queue tickets left: %d", len(entries))
	}
	nixtest.Verify(t, env.StoreRoot)
}

// fetchChildren returns the PIDs of the running `storepkg fetch --json`
// for the store under root.
func fetchChildren(root string) []int {
	want := "fetch\x00--json\x00--root\x00" + root + "\x00"
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline")); err == nil && strings.Contains(string(b), want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// fetchChildWith returns a fetch child for root whose command line has
// arg, or 0.
func fetchChildWith(root, arg string) int {
	for _, pid := range fetchChildren(root) {
		if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline")); err == nil && strings.Contains(string(b), "\x00"+arg+"\x00") {
			return pid
		}
	}
	return 0
}

// waitRecord waits for a record of the sandbox that satisfies ok.
func waitRecord(t *testing.T, env *critest.Env, sandboxID, what string, ok func(*fetchrecord.Record) bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, r := range readRecords(t, env.StatusDir) {
			if r.SandboxID == sandboxID && ok(r) {
				return
			}
		}
	}
	t.Fatalf("%s: no such fetch record within 15s", what)
}

// logCgroups logs the cgroups of a pod's shim and of its fetch child,
// and checks the child is in its shim's.
func logCgroups(t *testing.T, env *critest.Env, podID string, child int) {
	t.Helper()
	shim, err := env.ShimPID(podID)
	if err != nil {
		t.Fatal(err)
	}
	read := func(pid int) string {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	shimCg, childCg := read(shim), read(child)
	t.Logf("shim %d cgroups:\n%s\nfetch child %d cgroups:\n%s\nthis test's:\n%s", shim, shimCg, child, childCg, read(os.Getpid()))
	if shimCg != childCg {
		t.Errorf("the fetch child is not in its shim's cgroups")
	}
}
