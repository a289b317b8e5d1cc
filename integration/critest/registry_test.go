package critest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/storepkg/storepkg/integration/benchtest"
	"github.com/storepkg/storepkg/integration/testimages"
)

// TestRegistryPullAndShimPID: with RegistryHosts, CRI pulls an image from
// a registry on 127.0.0.1 over plain HTTP; ShimPID finds the runc shim of
// the pod through the sandbox's init.pid.
func TestRegistryPullAndShimPID(t *testing.T) {
	Require(t)
	reg := benchtest.StartRegistry(t, filepath.Join(t.TempDir(), "registry"))
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := testimages.Image([]testimages.File{
		{Path: "/bin/busybox", Data: busybox, Mode: 0o755},
		{Path: "/bin/sh", Link: "busybox"},
	}, v1.Config{Env: []string{"PATH=/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := reg.Push(context.Background(), "critest/busybox", "pulled", img)
	if err != nil {
		t.Fatal(err)
	}
	reg.Reset()
	env := Start(t, Options{RegistryHosts: map[string]string{reg.Host: reg.URL}})
	env.Crictl(t, "pull", ref)
	if blobs := reg.Total(benchtest.IsBlob); blobs.Requests != 2 {
		t.Errorf("pull fetched %d blobs, want 2 (config and layer)", blobs.Requests)
	}

	pod := env.PodConfig("pulled", "default", nil)
	podID := env.RunPodSandbox(t, HandlerRunc, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("main", ref, []string{"sh", "-c", "echo pulled; sleep 3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "pulled", 10*time.Second)

	pid, err := env.ShimPID(podID)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil || filepath.Base(exe) != "containerd-shim-runc-v2" {
		t.Errorf("ShimPID = %d (%s, %v), want the runc shim", pid, exe, err)
	}
	if _, err := env.ShimPID(strings.Repeat("0", 64)); err == nil {
		t.Error("ShimPID of an unknown pod succeeded")
	}
}
