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
)

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
