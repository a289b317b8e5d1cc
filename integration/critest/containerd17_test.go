package critest

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestContainerd17Env: Options.Containerd selects containerd 1.7, with a
// version-2 configuration that gives it the storepkg runtime (type, path,
// pod_annotations, options) as the default; a busybox pod without store
// paths runs on our shim unchanged, and the cleanup leaves nothing.
func TestContainerd17Env(t *testing.T) {
	Require17(t)
	var env *Env
	t.Run("pod", func(t *testing.T) {
		shim := BuildShim(t)
		env = Start(t, Options{
			Containerd:      Containerd17Version,
			ShimPath:        shim,
			StorepkgOptions: map[string]any{"MaxJobs": 2},
		})
		if out := env.Crictl(t, "version"); !strings.Contains(out, "RuntimeVersion:  "+strings.TrimPrefix(Containerd17Version, "v")) {
			t.Fatalf("crictl version: not containerd %s:\n%s", Containerd17Version, out)
		}
		var info struct {
			Config struct {
				Containerd struct {
					DefaultRuntimeName string `json:"defaultRuntimeName"`
					Runtimes           map[string]struct {
						RuntimeType    string         `json:"runtimeType"`
						RuntimePath    string         `json:"runtimePath"`
						PodAnnotations []string       `json:"PodAnnotations"`
						Options        map[string]any `json:"options"`
					} `json:"runtimes"`
				} `json:"containerd"`
			} `json:"config"`
		}
		if err := json.Unmarshal([]byte(env.Crictl(t, "info")), &info); err != nil {
			t.Fatal(err)
		}
		rt, ok := info.Config.Containerd.Runtimes[HandlerStorepkg]
		if !ok || info.Config.Containerd.DefaultRuntimeName != HandlerStorepkg {
			t.Fatalf("runtimes %+v, default %q", info.Config.Containerd.Runtimes, info.Config.Containerd.DefaultRuntimeName)
		}
		if rt.RuntimeType != StorepkgRuntimeType || rt.RuntimePath != shim || !slices.Equal(rt.PodAnnotations, []string{"storepkg.dev/*"}) {
			t.Errorf("runtime %+v", rt)
		}
		if rt.Options["MaxJobs"] != float64(2) || rt.Options["StoreRoot"] != env.StoreRoot {
			t.Errorf("options %v", rt.Options)
		}

		pod := env.PodConfig("busybox17", "default", nil)
		podID := env.RunPodSandbox(t, HandlerStorepkg, pod)
		id, err := env.CreateContainer(t, podID, env.ContainerConfig("main", BusyboxImage, []string{"sh", "-c", "echo hello; sleep 3600"}), pod)
		if err != nil {
			t.Fatal(err)
		}
		env.Start(t, id)
		env.WaitLogs(t, id, "hello", 10*time.Second)
		if got := env.Exec(t, id, "echo", "hi"); got != "hi\n" {
			t.Errorf("exec echo hi: %q", got)
		}
		env.Stop(t, id)
		if state := env.ContainerState(t, id); state != "CONTAINER_EXITED" {
			t.Errorf("state after stop %s", state)
		}
		env.Rm(t, id)
		env.StopPod(t, podID)
		env.RmPod(t, podID)
		if m := env.Mounts(); len(m) > 0 {
			t.Errorf("mounts left after the pod is removed: %v", m)
		}
		assertNoTaskState(t, env)
	})
	if env == nil {
		return
	}
	if _, err := os.Stat(env.Dir); !os.IsNotExist(err) {
		t.Errorf("%s left: %v", env.Dir, err)
	}
	if procs := env.processes(); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
}
