package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/toolcache"
)

// TestContainerdRestart: on every containerd of the matrix, a running
// storepkg pod outlives restarts of containerd (stopped by PID with
// SIGTERM, as `storepkg node install` restarting its service does, then
// SIGKILLed as in a crash; each time started again on the same root and
// state): containerd reconnects to the same shim, the container is still running, exec works, its log goes on,
// and stop and remove leave nothing behind. containerd 1.7 reconnects
// through the `address` file the shim leaves in its bundle at start
// (docs/compatibility.md); 2.0 on through their bootstrap.json.
func TestContainerdRestart(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	for _, version := range critest.ContainerdMatrix {
		t.Run(version, func(t *testing.T) {
			critest.RequireContainerd(t, version)
			testContainerdRestart(t, version, url)
		})
	}
}

var tickRe = regexp.MustCompile(`(?m)^tick (\d+)$`)

// lastTick is the highest "tick N" line of a log, -1 if none.
func lastTick(log string) int {
	last := -1
	for _, m := range tickRe.FindAllStringSubmatch(log, -1) {
		if n, err := strconv.Atoi(m[1]); err == nil && n > last {
			last = n
		}
	}
	return last
}

func testContainerdRestart(t *testing.T, version, url string) {
	started := time.Now()
	env := critest.Start(t, critest.Options{
		Containerd: version,
		ShimPath:   fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url},
			"TrustedPublicKeys": []string{fixture.key.Public},
		},
	})
	fx := fixture.fx
	pod := env.PodConfig("restart", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	// sh, sleep and the counter come from the closure (Tools' busybox).
	cmd := []string{"sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"}
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("ticker", critest.PauseImage, cmd), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "tick 1\n", 30*time.Second)
	shimPID, err := env.ShimPID(podID)
	if err != nil {
		t.Fatal(err)
	}
	checkAddressFile(t, env, version, podID)

	// Stopped as a service manager stops it (what node install's restart
	// does), then killed as in a crash: the pod outlives both.
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		containerd := env.ContainerdPID()
		if err := syscall.Kill(containerd, sig); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); env.ContainerdPID() != 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("containerd %d still running 30s after %v", containerd, sig)
			}
		}
		if _, ok := env.Processes()[shimPID]; !ok {
			t.Fatalf("the shim %d did not outlive containerd (%v): %v", shimPID, sig, env.Processes())
		}
		restartedAt := len(readLog(t, env))
		env.RestartContainerd(t)

		if state := env.ContainerState(t, id); state != "CONTAINER_RUNNING" {
			// containerd took the shim for dead; the rest would only time out.
			t.Fatalf("container after a restart (%v): %s, want CONTAINER_RUNNING", sig, state)
		}
		if state := podState(t, env, podID); state != "SANDBOX_READY" {
			t.Errorf("pod after a restart (%v): %s, want SANDBOX_READY", sig, state)
		}
		if pid, err := env.ShimPID(podID); err != nil || pid != shimPID {
			t.Errorf("shim after a restart (%v): %d (%v), want the same %d", sig, pid, err, shimPID)
		}
		if out, err := env.ExecErr(id, "echo", "still here"); err != nil || out != "still here\n" {
			t.Errorf("exec after a restart (%v): %q, %v", sig, out, err)
		}
		// The log goes on: ticks written after the restart reach it.
		after := lastTick(env.Logs(t, id)) + 5
		env.WaitLogs(t, id, "tick "+strconv.Itoa(after)+"\n", 30*time.Second)
		since := readLog(t, env)
		if len(since) >= restartedAt {
			since = since[restartedAt:]
		}
		for _, bad := range []string{"cleanup dead shim", "cleaning up dead shim", "cleaning up after shim disconnected", "failed to load shim", "failed to read bootstrap.json"} {
			if strings.Contains(since, bad) {
				t.Errorf("containerd's log after a restart (%v): %q", sig, bad)
			}
		}
	}

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
	// The shim exits with its last container (containerd's Shutdown).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, ok := env.Processes()[shimPID]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("shim %d still running 10s after its pod was removed", shimPID)
			break
		}
	}
	t.Logf("containerd %s: the pod outlived both restarts; %.1fs in all", version, time.Since(started).Seconds())
}

func readLog(t *testing.T, env *critest.Env) string {
	t.Helper()
	data, err := os.ReadFile(env.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// checkAddressFile: where the shim answered containerd's start in JSON
// (1.7 to 2.2), it left its socket's address in the sandbox's bundle, as
// containerd 1.7's own shims did, for containerd 1.7 to reconnect.
func checkAddressFile(t *testing.T, env *critest.Env, version, podID string) {
	t.Helper()
	major, minor, err := toolcache.Minor(version)
	if err != nil {
		t.Fatal(err)
	}
	if major > 2 || major == 2 && minor >= 3 {
		return
	}
	data, err := os.ReadFile(filepath.Join(env.StateDir, "io.containerd.runtime.v2.task", critest.Namespace, podID, "address"))
	if err != nil {
		t.Errorf("containerd %s: the shim left no address: %v", version, err)
		return
	}
	if !strings.HasPrefix(string(data), "unix://") {
		t.Errorf("containerd %s: the shim's address file holds %q, want a unix:// address", version, data)
	}
}
