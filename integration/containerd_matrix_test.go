package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/toolcache"
)

// TestContainerdMatrix: the same shim binary under the newest patch of
// every containerd minor from 1.7 on (critest.ContainerdMatrix). On each,
// a storepkg pod runs end to end (its container from the closure, logs,
// exec with the closure's PATH, stop, rm) and leaves no mount, GC root or
// owner record; containerd connects to the shim with the task API its
// start protocol implies (docs/compatibility.md); and a pod whose shim is
// SIGKILLed is cleaned up with the shim's `delete` command.
func TestContainerdMatrix(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	for _, version := range critest.ContainerdMatrix {
		t.Run(version, func(t *testing.T) {
			critest.RequireContainerd(t, version)
			testContainerdVersion(t, version, url)
		})
	}
}

func testContainerdVersion(t *testing.T, version, url string) {
	started := time.Now()
	env := critest.Start(t, critest.Options{
		Containerd: version,
		ShimPath:   fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url},
			"TrustedPublicKeys": []string{fixture.key.Public},
		},
	})
	// A daemon built in a copy of its module says "1.7.35+unknown".
	running := regexp.MustCompile(`(?m)^RuntimeVersion:\s+v?` + regexp.QuoteMeta(strings.TrimPrefix(version, "v")) + `(\+unknown)?$`)
	if out := env.Crictl(t, "version"); !running.MatchString(out) {
		t.Fatalf("crictl version: not containerd %s:\n%s", version, out)
	}
	ready := time.Since(started)
	fx := fixture.fx

	flow := time.Now()
	pod := env.PodConfig("matrix", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	checkTaskAPI(t, env, version, podID)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "storepkg"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from storepkg, linked dynamically", 30*time.Second)
	assertClosureView(t, env, id, fx)
	assertRoots(t, env, 2, "while running (one per root path)")
	// The exit reaches containerd as an event (TaskExit): CRI sees it.
	env.Stop(t, id)
	if state := env.ContainerState(t, id); state != "CONTAINER_EXITED" {
		t.Errorf("state after stop: %s", state)
	}
	env.Rm(t, id)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
	assertRoots(t, env, 0, "after rm")
	if ms := env.Mounts(); len(ms) > 0 {
		t.Errorf("mounts left after the pod is removed: %v", ms)
	}
	podFlow := time.Since(flow)

	// A shim that dies: containerd runs `delete` (cleanup of a dead
	// shim), which must answer in a form it reads.
	flow = time.Now()
	pod = env.PodConfig("matrix-killed", "default", paths(fx.Hello, fx.Tools))
	podID = env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err = env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "storepkg"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from storepkg, linked dynamically", 30*time.Second)
	shimPID, err := env.ShimPID(podID)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(shimPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Both the container and the sandbox exit (as a kubelet would, wait
	// for the sandbox before stopping it: CRI 1.7 handles the two exits
	// one after the other).
	deadline := time.Now().Add(30 * time.Second)
	for env.ContainerState(t, id) != "CONTAINER_EXITED" || podState(t, env, podID) != "SANDBOX_NOTREADY" {
		if time.Now().After(deadline) {
			t.Fatalf("container %s (%s) or pod (%s) not exited 30s after their shim was killed", id, env.ContainerState(t, id), podState(t, env, podID))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// containerd publishes the exits before it drops the dead shim from
	// its tasks (2.1 at least): until then a removal can still reach the
	// dead shim and fail with "ttrpc: closed". kubelet retries; so do we,
	// once the cleanup is in containerd's log.
	var log []byte
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(string(log), "cleaning up dead shim"); time.Sleep(100 * time.Millisecond) {
		if log, err = os.ReadFile(env.LogPath); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's log does not show the dead shim's cleanup 30s after the kill")
		}
	}
	env.StopPod(t, podID)
	for attempt := 1; ; attempt++ {
		out, err := env.CrictlErr("rmp", podID)
		if err == nil {
			break
		}
		if attempt == 10 || !strings.Contains(err.Error()+out, "ttrpc: closed") {
			t.Fatalf("crictl rmp %s (attempt %d): %v", podID, attempt, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(string(log), "cleaning up dead shim") {
		t.Errorf("containerd's log does not show the dead shim's cleanup")
	}
	for _, bad := range []string{"failed to delete dead shim", "failed to clean up after shim disconnected", "failed to delete bundle", "unsupported shim version", "failed to publish"} {
		if strings.Contains(string(log), bad) {
			t.Errorf("containerd's log: %q", bad)
		}
	}
	assertNothingLeft(t, env, id)
	if ms := env.Mounts(); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	t.Logf("containerd %s: ready in %.1fs, pod flow %.1fs, killed shim %.1fs",
		version, ready.Seconds(), podFlow.Seconds(), time.Since(flow).Seconds())
}

// checkTaskAPI checks which task API containerd speaks with the pod's
// shim, as it recorded the shim's start answer in the bundle: 1.7 records
// none (it has only the task API v2); 2.0 to 2.2 write the
// shim a start without bootstrap parameters, get JSON of version 2 and use
// the task API v2; 2.3 on get the bootstrap protocol's answer, version 3.
func checkTaskAPI(t *testing.T, env *critest.Env, version, podID string) {
	t.Helper()
	bundle := filepath.Join(env.StateDir, "io.containerd.runtime.v2.task", critest.Namespace, podID)
	major, minor, err := toolcache.Minor(version)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json"))
	if major < 2 {
		if !os.IsNotExist(err) {
			t.Errorf("containerd %s wrote bootstrap.json (%v): not the 1.7 this test knows", version, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var params struct {
		Version  int    `json:"version"`
		Protocol string `json:"protocol"`
	}
	if err := json.Unmarshal(data, &params); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
	want := 3
	if major == 2 && minor < 3 {
		want = 2
	}
	if params.Version != want || params.Protocol != "ttrpc" {
		t.Errorf("containerd %s connected to the shim with %s, want task API v%d over ttrpc", version, data, want)
	}
}

func podState(t *testing.T, env *critest.Env, podID string) string {
	status, _ := env.InspectPod(t, podID)["status"].(map[string]any)
	state, _ := status["state"].(string)
	return state
}
