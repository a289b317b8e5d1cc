package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/tmpfstest"
	"github.com/storepkg/storepkg/pkg/agent"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestRunningClosureSurvivesDiskPressure: the store is on a small tmpfs
// filled past the agent's high threshold. The agent's collection loop
// deletes a removed pod's closure once it is older than the minimum age,
// never before, and never the closures of running containers; once one
// of two pods is deleted, its unshared paths go and those it shared with
// the other pod stay. Nix finds the store consistent afterwards.
func TestRunningClosureSurvivesDiskPressure(t *testing.T) {
	setup(t)
	const minAge = 10 * time.Second
	storeRoot := tmpfstest.Mount(t, 32<<20)
	url, _ := countingCache(t, fixture.cache, 0)
	junkDir, junkRoot, junkAll, junkKey := syntheticCache(t, "junk", 6)
	junkURL, _ := countingCache(t, junkDir, 0)
	statusDir := filepath.Join(t.TempDir(), "fetches")
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url, junkURL},
			"TrustedPublicKeys": []string{fixture.key.Public, junkKey.Public().String()},
			"StoreRoot":         storeRoot,
			"StatusDir":         statusDir,
		},
	})
	fx := fixture.fx
	ctx := context.Background()
	valid := func(paths []string) map[string]bool {
		st, err := store.Open(ctx, storeRoot)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		var ps []storepath.Path
		for _, p := range paths {
			sp, err := storepath.Parse(p)
			if err != nil {
				t.Fatal(err)
			}
			ps = append(ps, sp)
		}
		v, err := st.ValidSubset(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for p, ok := range v {
			out[p.Absolute()] = ok
		}
		return out
	}

	// Two running pods: A uses hello and tools, B tools only.
	podA := env.PodConfig("a", "default", paths(fx.Hello, fx.Tools))
	podAID := env.RunPodSandbox(t, critest.HandlerStorepkg, podA)
	ctrA, err := env.CreateContainer(t, podAID, env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "pod a"}), podA)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, ctrA)
	podB := env.PodConfig("b", "default", paths(fx.Tools))
	podBID := env.RunPodSandbox(t, critest.HandlerStorepkg, podB)
	ctrB, err := env.CreateContainer(t, podBID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), podB)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, ctrB)
	env.WaitLogs(t, ctrA, "hello from pod a", 30*time.Second)
	closureA := nixtest.QueryClosure(t, storeRoot, fx.Hello)
	closureB := nixtest.QueryClosure(t, storeRoot, fx.Tools)
	var unsharedA []string
	for _, p := range closureA {
		if !slices.Contains(closureB, p) {
			unsharedA = append(unsharedA, p)
		}
	}
	if len(unsharedA) == 0 || len(closureB) == 0 {
		t.Fatalf("closures: A %v, B %v", closureA, closureB)
	}

	// A pod that came and went: its closure (prefetched) is garbage, and
	// younger than the minimum age for the first collections. It comes
	// last before the agent starts, so that the slow start of the other
	// pods does not use up its young seconds.
	junkPod := env.PodConfig("gone", "default", paths(junkRoot.Absolute()))
	junkPodID := env.RunPodSandbox(t, critest.HandlerStorepkg, junkPod)
	var junkFetched time.Time // no later than the junk's registration
	for deadline := time.Now().Add(30 * time.Second); ; {
		if rs := recordsOf(readRecords(t, statusDir), "gone"); len(rs) == 1 && rs[0].State == fetchrecord.Done {
			junkFetched = rs[0].Start
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gone pod's prefetch did not finish in 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	env.StopPod(t, junkPodID)
	env.RmPod(t, junkPodID)
	var junk []string
	for _, p := range junkAll {
		junk = append(junk, p.Absolute())
	}

	// Disk pressure: the tmpfs 95% full, so that each collection may free
	// 15% (more than pod a's closure) and the pressure lasts after it.
	// Real Nix (the queries above) reserved 8 MiB in db/reserved, which
	// every collection deletes first: out of the picture with it.
	if err := os.Remove(filepath.Join(storeRoot, "nix/var/nix/db/reserved")); err != nil {
		t.Fatal(err)
	}
	fillTo(t, storeRoot, 0.95)

	type endedRun struct {
		agent.GCRun
		end time.Time // after the run, so after its collection's cutoff
	}
	runs := make(chan endedRun, 100)
	actx, cancel := context.WithCancel(ctx)
	a, err := agent.New(actx, agent.Config{
		StoreRoot: storeRoot, StatusDir: statusDir,
		Interval: 300 * time.Millisecond, HighPercent: 85, LowPercent: 80, MinAge: minAge,
		OnGC: func(r agent.GCRun) {
			select {
			case runs <- endedRun{r, time.Now()}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(actx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); a.Wait() }()
	deleted := map[string]bool{}
	youngRuns := 0 // collections while the junk was younger than the minimum age
	// waitDeleted collects runs until every path of want is deleted.
	waitDeleted := func(want []string, what string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			missing := 0
			for _, p := range want {
				if !deleted[p] {
					missing++
				}
			}
			if missing == 0 {
				return
			}
			select {
			case r := <-runs:
				if r.Err != nil {
					t.Fatalf("collection: %v", r.Err)
				}
				if !r.Collected {
					t.Fatalf("a check at %.1f%% usage did not collect; the test needs the pressure to last: %+v", r.UsagePercent, r)
				}
				// The collector keeps what was registered less than
				// minAge before it looked (r.Time <= then <= r.end); the
				// junk was registered after junkFetched.
				if age := r.end.Sub(junkFetched); age < minAge {
					youngRuns++
					if r.Result.Valid > 0 {
						t.Errorf("a collection that ended %v after the junk was fetched deleted %v: younger than the minimum age %v", age, r.Result.Dead, minAge)
					}
				}
				for _, p := range r.Result.Dead {
					deleted[p] = true
				}
			case <-deadline:
				t.Fatalf("%s: %d paths not deleted after 60s (deleted: %v)", what, missing, deleted)
			}
		}
	}

	waitDeleted(junk, "the gone pod's closure")
	t.Logf("%d collections under pressure deleted nothing while the junk was younger than %v", youngRuns, minAge)
	if youngRuns == 0 {
		t.Error("no collection ran while the junk was young: the minimum age was not exercised")
	}
	for _, p := range append(slices.Clone(closureA), closureB...) {
		if deleted[p] {
			t.Errorf("%s of a running container deleted", p)
		}
	}
	v := valid(append(slices.Clone(closureA), closureB...))
	for p, ok := range v {
		if !ok {
			t.Errorf("%s of a running container is no longer valid", p)
		}
	}
	// The running containers still work off their closure.
	if state := env.ContainerState(t, ctrA); state != "CONTAINER_RUNNING" {
		t.Errorf("pod a's container is %s after the collection", state)
	}
	for _, p := range closureA {
		if strings.HasSuffix(p, "-glibc-host") {
			if out := env.Exec(t, ctrA, "head", "-c", "4", p+"/lib/libc.so.6"); out != "\x7fELF" {
				t.Errorf("libc in pod a after the collection starts with %q", out)
			}
		}
	}

	// Pod A goes: its unshared paths follow; what B uses stays.
	env.StopPod(t, podAID)
	env.RmPod(t, podAID)
	waitDeleted(unsharedA, "pod a's unshared paths")
	for _, p := range closureB {
		if deleted[p] {
			t.Errorf("%s, shared with the running pod b, deleted", p)
		}
	}
	for p, ok := range valid(closureB) {
		if !ok {
			t.Errorf("%s of pod b is no longer valid", p)
		}
	}
	if out := env.Exec(t, ctrB, "ls", fx.Tools+"/bin"); !strings.Contains(out, "sleep") {
		t.Errorf("pod b after the collection: %q", out)
	}
	cancel()
	a.Wait()
	env.StopPod(t, podBID)
	env.RmPod(t, podBID)
	nixtest.Verify(t, storeRoot)
}

// fillTo writes a file beside the store so its filesystem is used to
// fraction of its size.
func fillTo(t *testing.T, dir string, fraction float64) {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	size, avail := int64(fs.Blocks)*fs.Bsize, int64(fs.Bavail)*fs.Bsize
	need := int64(fraction*float64(size)) - (size - avail)
	if need <= 0 {
		t.Fatalf("%s is already %.1f%% full", dir, 100-float64(avail)*100/float64(size))
	}
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, need), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d of %d bytes available after filling", dir, int64(fs.Bavail)*fs.Bsize, size)
}

// TestPodStoreOutOfSpace: a store whose filesystem cannot hold the pod's
// closure fails the container's start with ResourceExhausted (fetch
// failure kind no_space), saying that the store's filesystem is full, and
// leaves no temporary directory behind.
func TestPodStoreOutOfSpace(t *testing.T) {
	setup(t)
	storeRoot := tmpfstest.Mount(t, 2<<20) // hello's closure (glibc) is far larger
	url, _, _ := serveCache(t)
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url},
			"TrustedPublicKeys": []string{fixture.key.Public},
			"StoreRoot":         storeRoot,
		},
	})
	pod := env.PodConfig("full", "default", paths(fixture.fx.Hello))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("a", critest.PauseImage, []string{"hello-dyn", "full"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.CrictlErr("start", id)
	if err == nil {
		t.Fatalf("start on a full store succeeded: %s", out)
	}
	t.Logf("start error: %v", err)
	for _, w := range []string{"no space left on device", "the node store's filesystem is full", "ResourceExhausted"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("start error does not say %q:\n%v", w, err)
		}
	}
	for _, e := range nixtest.StoreEntries(t, storeRoot) {
		if strings.HasSuffix(e, ".storepkg-tmp") {
			t.Errorf("temporary directory %s left in the store", e)
		}
	}
	env.Rm(t, id)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
}
