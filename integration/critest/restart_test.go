package critest

import (
	"strings"
	"testing"
	"time"
)

// TestRestartAndReboot: a runc pod outlives a SIGKILLed containerd (its
// shim keeps running it) and runs on after RestartContainerd; after
// Reboot nothing of it runs or is mounted, /run-like state is empty, and
// a new pod runs.
func TestRestartAndReboot(t *testing.T) {
	env := Start(t, Options{})
	pod := env.PodConfig("survivor", "default", nil)
	podID := env.RunPodSandbox(t, HandlerRunc, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("main", BusyboxImage, []string{"sh", "-c", "echo up; sleep 3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "up", 10*time.Second)
	shim, err := env.ShimPID(podID)
	if err != nil {
		t.Fatal(err)
	}

	containerd := env.ContainerdPID()
	env.KillContainerd(t)
	if env.ContainerdPID() != 0 {
		t.Error("ContainerdPID after KillContainerd")
	}
	if _, ok := env.Processes()[shim]; !ok {
		t.Errorf("the shim %d did not outlive containerd: %v", shim, env.Processes())
	}
	env.RestartContainerd(t)
	if pid := env.ContainerdPID(); pid == 0 || pid == containerd {
		t.Errorf("containerd PID %d after restart (was %d)", pid, containerd)
	}
	if state := env.ContainerState(t, id); state != "CONTAINER_RUNNING" {
		t.Errorf("container after the restart: %s", state)
	}
	if out := env.Exec(t, id, "echo", "still"); out != "still\n" {
		t.Errorf("exec after the restart: %q", out)
	}

	env.Reboot(t)
	if procs := env.Processes(); len(procs) > 0 {
		t.Errorf("processes after the reboot: %v", procs)
	}
	if m := env.Mounts(); len(m) > 0 {
		t.Errorf("mounts after the reboot: %v", m)
	}
	if state := env.ContainerState(t, id); state == "CONTAINER_RUNNING" {
		t.Error("the container runs after the reboot")
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	pod = env.PodConfig("after", "default", nil)
	podID = env.RunPodSandbox(t, HandlerRunc, pod)
	id, err = env.CreateContainer(t, podID, env.ContainerConfig("main", BusyboxImage, []string{"sh", "-c", "echo again; sleep 3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "again", 10*time.Second)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	if out := env.Crictl(t, "pods", "--quiet"); strings.TrimSpace(out) != "" {
		t.Errorf("pods left: %s", out)
	}
}
