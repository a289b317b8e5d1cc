package critest

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRuncPod drives a busybox pod through the runc handler end to end:
// it proves the harness (config, CNI, images, crictl helpers, cleanup),
// then checks the cleanup left nothing behind on the host.
func TestRuncPod(t *testing.T) {
	Require(t)
	// The value to restore: the one recorded by the first live Env, which
	// may be one whose test process died.
	forwardBefore := readFile(t, ipForward)
	if orig, err := os.ReadFile(filepath.Join(lockDir, forwardFile)); err == nil {
		forwardBefore = strings.TrimSpace(string(orig))
	}
	var env *Env
	t.Run("pod", func(t *testing.T) {
		env = Start(t, Options{})
		runcPod(t, env)
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
	if cgroups := env.cgroupDirs(); len(cgroups) > 0 {
		t.Errorf("cgroups left: %v", cgroups)
	}
	if _, err := os.Stat("/sys/class/net/" + env.Network.Bridge); err == nil {
		t.Errorf("bridge %s left", env.Network.Bridge)
	}
	if !otherEnvsLive() {
		if after := readFile(t, ipForward); after != forwardBefore {
			t.Errorf("net.ipv4.ip_forward: %q before, %q after", forwardBefore, after)
		}
	}
}

func runcPod(t *testing.T, env *Env) {
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "greeting"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	pod := env.PodConfig("busybox", "default", nil)
	podID := env.RunPodSandbox(t, HandlerRunc, pod)

	ctr := env.ContainerConfig("main", BusyboxImage, []string{"sh", "-c", "echo hello; sleep 3600"})
	ctr["mounts"] = []any{Mount(hostDir, "/host", true)}
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)

	env.WaitLogs(t, id, "hello", 10*time.Second)
	if got := env.Exec(t, id, "echo", "hi"); got != "hi\n" {
		t.Errorf("exec echo hi: %q", got)
	}
	if got := env.Exec(t, id, "cat", "/host/greeting"); got != "from the host\n" {
		t.Errorf("host dir in the container: %q", got)
	}
	if _, err := env.ExecErr(id, "sh", "-c", "echo x > /host/x"); err == nil {
		t.Error("wrote to a read-only mount")
	}
	if state := env.ContainerState(t, id); state != "CONTAINER_RUNNING" {
		t.Errorf("state %s", state)
	}
	if len(env.Mounts()) == 0 {
		t.Error("no mounts under the env dir while a pod runs")
	}

	// The pod is reachable from the host over the bridge: busybox httpd
	// serves the mounted dir on the pod IP.
	ip := env.PodIP(t, podID)
	if !env.Network.Subnet.Contains(parseIP(t, ip)) {
		t.Errorf("pod IP %s not in %s", ip, env.Network.Subnet)
	}
	env.Exec(t, id, "httpd", "-p", "8080", "-h", "/host") // daemonizes
	if got := httpGet(t, "http://"+net.JoinHostPort(ip, "8080")+"/greeting"); got != "from the host\n" {
		t.Errorf("GET /greeting from the pod: %q", got)
	}
	if v := readFile(t, ipForward); v != "1" {
		t.Logf("ip_forward is %q with a bridge up", v)
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
	if out := env.Crictl(t, "pods", "--quiet"); strings.TrimSpace(out) != "" {
		t.Errorf("pods left: %s", out)
	}
	assertNoTaskState(t, env)
}

// httpGet GETs url, retrying briefly while the server starts.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	// No proxy from the environment: the pod is on this machine's bridge.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			return string(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// assertNoTaskState checks that containerd's state dir has no task of
// the k8s.io namespace left.
func assertNoTaskState(t *testing.T, env *Env) {
	t.Helper()
	tasks, _ := os.ReadDir(filepath.Join(env.StateDir, "io.containerd.runtime.v2.task", Namespace))
	for _, task := range tasks {
		t.Errorf("task state left: %s", task.Name())
	}
}

func parseIP(t *testing.T, s string) net.IP {
	t.Helper()
	ip := net.ParseIP(s)
	if ip == nil {
		t.Fatalf("bad IP %q", s)
	}
	return ip
}

// TestStorepkgHandlerConfig checks what containerd makes of the storepkg
// runtime's configuration, and that a pod fails cleanly when the shim is
// missing.
func TestStorepkgHandlerConfig(t *testing.T) {
	Require(t)
	shim := filepath.Join(t.TempDir(), StorepkgShimBinary) // does not exist
	env := Start(t, Options{
		ShimPath:            shim,
		StorepkgOptionsTOML: "Substituters = [\"http://127.0.0.1:1\"]\nMaxJobs = 4\n",
		StorepkgOptions:     map[string]any{"StoreRoot": "/tmp/store", "MaxJobs": 2},
	})

	var info struct {
		Config struct {
			Containerd struct {
				Runtimes map[string]struct {
					RuntimeType    string         `json:"runtimeType"`
					RuntimePath    string         `json:"runtimePath"`
					PodAnnotations []string       `json:"PodAnnotations"`
					Options        map[string]any `json:"options"`
				} `json:"runtimes"`
			} `json:"containerd"`
			RestrictOOMScoreAdj bool `json:"restrictOOMScoreAdj"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(env.Crictl(t, "info")), &info); err != nil {
		t.Fatal(err)
	}
	rt, ok := info.Config.Containerd.Runtimes[HandlerStorepkg]
	if !ok {
		t.Fatalf("no %s runtime in %+v", HandlerStorepkg, info.Config.Containerd.Runtimes)
	}
	if rt.RuntimeType != StorepkgRuntimeType || rt.RuntimePath != shim {
		t.Errorf("runtime type %q path %q", rt.RuntimeType, rt.RuntimePath)
	}
	if !slices.Equal(rt.PodAnnotations, []string{"storepkg.dev/*"}) {
		t.Errorf("pod annotations %q", rt.PodAnnotations)
	}
	want := map[string]any{
		"Substituters": []any{"http://127.0.0.1:1"}, // from the TOML
		"MaxJobs":      float64(2),                  // the map wins
		"StoreRoot":    "/tmp/store",
		// defaults
		"BinaryName":    env.tools.runc,
		"Root":          env.RuncRoot,
		"SystemdCgroup": false,
		"StatusDir":     env.StatusDir,
		"FetchSlotsDir": env.FetchSlotsDir,
		// No peers unless a test gives them: never the machine's own
		// /run/storepkg/peers.
		"PeersFile": "",
	}
	if !reflect.DeepEqual(rt.Options, want) {
		t.Errorf("options %v, want %v", rt.Options, want)
	}
	if !info.Config.RestrictOOMScoreAdj {
		t.Error("restrict_oom_score_adj is off")
	}

	_, err := env.RunPodSandboxErr(HandlerStorepkg, env.PodConfig("noshim", "default", nil))
	if err == nil {
		t.Fatal("a pod ran without its shim")
	}
	t.Logf("without the shim: %v", err)
	if m := env.Mounts(); len(m) > 0 {
		t.Errorf("mounts left after a failed pod: %v", m)
	}
}

// TestStorepkgHandlerPlumbing runs a pod on the storepkg handler with
// containerd's runc shim standing in for ours (runtime_path): containerd
// starts the shim from runtime_path with this Env's sockets and forwards
// the storepkg.dev/* pod annotations into the OCI specs.
func TestStorepkgHandlerPlumbing(t *testing.T) {
	Require(t)
	tl, err := findTools()
	if err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(t.TempDir(), StorepkgShimBinary)
	// A copy, not a symlink: the shim re-executes os.Executable().
	data, err := os.ReadFile(tl.shimRunc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shim, data, 0o755); err != nil {
		t.Fatal(err)
	}
	env := Start(t, Options{
		ShimPath: shim,
		// runc's shim takes no storepkg options.
		Config: func(c map[string]any) { delete(RuntimeConfig(c, HandlerStorepkg), "options") },
	})

	annotations := map[string]string{
		"storepkg.dev/paths":  "/nix/store/00000000000000000000000000000000-hello",
		"other.example/thing": "not forwarded",
	}
	pod := env.PodConfig("plumbing", "default", annotations)
	podID := env.RunPodSandbox(t, HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("main", BusyboxImage, []string{"sleep", "3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)

	shims := 0
	for _, cmdline := range env.processes() {
		if strings.HasPrefix(cmdline, shim+" ") && strings.Contains(cmdline, "-address "+env.Socket) {
			shims++
		}
	}
	if shims != 1 {
		t.Errorf("want one shim from %s, found %d: %v", shim, shims, env.processes())
	}

	spec, _ := env.Inspect(t, id)["info"].(map[string]any)["runtimeSpec"].(map[string]any)
	specAnnotations, _ := spec["annotations"].(map[string]any)
	if got := specAnnotations["storepkg.dev/paths"]; got != annotations["storepkg.dev/paths"] {
		t.Errorf("container spec annotation storepkg.dev/paths = %v; annotations %v", got, specAnnotations)
	}
	if _, ok := specAnnotations["other.example/thing"]; ok {
		t.Error("an annotation outside pod_annotations reached the spec")
	}

	env.StopPod(t, podID)
	env.RmPod(t, podID)
	if m := env.Mounts(); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	assertNoTaskState(t, env)
}
