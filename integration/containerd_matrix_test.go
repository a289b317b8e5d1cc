package integration

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
)

// TestContainerd17: the same shim binary under containerd 1.7, which
// reads a JSON start answer of version 2 and speaks the task API v2. A
// storepkg pod runs end to end (its container from the closure, logs,
// exec with the closure's PATH, stop, rm) and leaves no mount, GC root or
// owner record; a pod whose shim is SIGKILLed is cleaned up by 1.7 with
// the shim's `delete` command.
func TestContainerd17(t *testing.T) {
	critest.Require17(t)
	setup(t)
	url, _, _ := serveCache(t)
	env := critest.Start(t, critest.Options{
		Containerd: critest.Containerd17Version,
		ShimPath:   fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url},
			"TrustedPublicKeys": []string{fixture.key.Public},
		},
	})
	if out := env.Crictl(t, "version"); !strings.Contains(out, strings.TrimPrefix(critest.Containerd17Version, "v")) {
		t.Fatalf("crictl version: not containerd %s:\n%s", critest.Containerd17Version, out)
	}
	fx := fixture.fx

	pod := env.PodConfig("c17", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
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

	// A shim that dies: containerd 1.7 runs `delete` (cleanup of a dead
	// shim), which must answer in a form it reads.
	pod = env.PodConfig("c17-killed", "default", paths(fx.Hello, fx.Tools))
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
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	log, err := os.ReadFile(env.LogPath)
	if err != nil {
		t.Fatal(err)
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
}

func podState(t *testing.T, env *critest.Env, podID string) string {
	status, _ := env.InspectPod(t, podID)["status"].(map[string]any)
	state, _ := status["state"].(string)
	return state
}
