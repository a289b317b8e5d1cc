package critest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Crictl runs crictl against this Env and returns its standard output; it
// fails the test, with crictl's output, on error.
func (e *Env) Crictl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.CrictlErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CrictlErr runs crictl against this Env and returns its standard output.
// The error carries the arguments and standard error.
func (e *Env) CrictlErr(args ...string) (string, error) {
	cmd := e.crictlCmd(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("crictl %s: %w\nstdout: %s\nstderr: %s",
			strings.Join(args, " "), err, strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// crictlCmd is crictl with this Env's endpoints and timeout. Flags, not
// only the config file: crictl lets $CONTAINER_RUNTIME_ENDPOINT and the
// like override its config file.
func (e *Env) crictlCmd(args ...string) *exec.Cmd {
	endpoint := "unix://" + e.Socket
	global := []string{
		"--config", e.crictlConfig,
		"--runtime-endpoint", endpoint,
		"--image-endpoint", endpoint,
		"--timeout", e.crictlTimeout.String(),
	}
	return exec.Command(e.tools.crictl, append(global, args...)...)
}

// crictlID runs a crictl command that prints an ID.
func (e *Env) crictlID(args ...string) (string, error) {
	out, err := e.CrictlErr(args...)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(out)
	if id == "" || strings.ContainsAny(id, " \n") {
		return "", fmt.Errorf("crictl %s: unexpected output %q", strings.Join(args, " "), out)
	}
	return id, nil
}

// RunPodSandbox runs a pod with the runtime handler (HandlerRunc,
// HandlerStorepkg) and returns its ID. pod is a PodSandboxConfig as JSON:
// a map (see PodConfig), a string or []byte.
func (e *Env) RunPodSandbox(t testing.TB, handler string, pod any) string {
	t.Helper()
	id, err := e.RunPodSandboxErr(handler, pod)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// RunPodSandboxErr is RunPodSandbox returning the error.
func (e *Env) RunPodSandboxErr(handler string, pod any) (string, error) {
	podFile, err := e.writeJSON("pod", pod)
	if err != nil {
		return "", err
	}
	id, err := e.crictlID("runp", "--runtime", handler, podFile)
	if id != "" {
		e.notePod(id)
	}
	return id, err
}

// CreateContainer creates a container in a pod from a ContainerConfig
// (container) and the pod's PodSandboxConfig (pod), both as for
// RunPodSandbox. It returns the error, so tests can expect one.
func (e *Env) CreateContainer(t testing.TB, podID string, container, pod any) (string, error) {
	t.Helper()
	containerFile, err := e.writeJSON("container", container)
	if err != nil {
		return "", err
	}
	podFile, err := e.writeJSON("pod", pod)
	if err != nil {
		return "", err
	}
	return e.crictlID("create", "--no-pull", podID, containerFile, podFile)
}

// Start starts a created container.
func (e *Env) Start(t testing.TB, id string) {
	t.Helper()
	e.Crictl(t, "start", id)
}

// Exec runs cmd in a running container and returns its standard output; a
// non-zero exit fails the test.
func (e *Env) Exec(t testing.TB, id string, cmd ...string) string {
	t.Helper()
	out, err := e.ExecErr(id, cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ExecErr runs cmd in a running container and returns its standard output,
// and an error (with standard error) on a non-zero exit. It uses CRI's
// streaming Exec (served on 127.0.0.1), which keeps the streams apart and
// the output exact; crictl's --sync mode adds newlines and mixes them.
func (e *Env) ExecErr(id string, cmd ...string) (string, error) {
	return e.CrictlErr(append([]string{"exec", id}, cmd...)...)
}

// Logs returns the container's log (standard output and error).
func (e *Env) Logs(t testing.TB, id string) string {
	t.Helper()
	out, err := e.crictlCmd("logs", id).CombinedOutput()
	if err != nil {
		t.Fatalf("crictl logs %s: %v: %s", id, err, out)
	}
	return string(out)
}

// WaitLogs waits until the container's log contains want, and returns the log.
func (e *Env) WaitLogs(t testing.TB, id, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		logs := e.Logs(t, id)
		if strings.Contains(logs, want) {
			return logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s: log has no %q after %v:\n%s", id, want, timeout, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops a container at once (SIGKILL, as crictl stop --timeout 0).
func (e *Env) Stop(t testing.TB, id string) {
	t.Helper()
	e.StopTimeout(t, id, 0)
}

// StopTimeout stops a container with its stop signal, then SIGKILL after timeout.
func (e *Env) StopTimeout(t testing.TB, id string, timeout time.Duration) {
	t.Helper()
	e.Crictl(t, "stop", "--timeout", strconv.Itoa(int(timeout.Seconds())), id)
}

// Rm removes a stopped container.
func (e *Env) Rm(t testing.TB, id string) {
	t.Helper()
	e.Crictl(t, "rm", id)
}

// StopPod stops a pod and its containers.
func (e *Env) StopPod(t testing.TB, podID string) {
	t.Helper()
	e.Crictl(t, "stopp", podID)
}

// RmPod removes a stopped pod.
func (e *Env) RmPod(t testing.TB, podID string) {
	t.Helper()
	e.Crictl(t, "rmp", podID)
}

// Inspect returns `crictl inspect` of a container.
func (e *Env) Inspect(t testing.TB, id string) map[string]any {
	t.Helper()
	return e.inspect(t, "inspect", id)
}

// InspectPod returns `crictl inspectp` of a pod.
func (e *Env) InspectPod(t testing.TB, podID string) map[string]any {
	t.Helper()
	return e.inspect(t, "inspectp", podID)
}

func (e *Env) inspect(t testing.TB, verb, id string) map[string]any {
	t.Helper()
	out := e.Crictl(t, verb, "--output", "json", id)
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("crictl %s %s: %v\n%s", verb, id, err, out)
	}
	return v
}

// ContainerState returns the container's state, e.g. CONTAINER_RUNNING.
func (e *Env) ContainerState(t testing.TB, id string) string {
	t.Helper()
	status, _ := e.Inspect(t, id)["status"].(map[string]any)
	state, _ := status["state"].(string)
	return state
}

// PodIP returns the pod's IP on the Env's bridge network.
func (e *Env) PodIP(t testing.TB, podID string) string {
	t.Helper()
	status, _ := e.InspectPod(t, podID)["status"].(map[string]any)
	network, _ := status["network"].(map[string]any)
	ip, _ := network["ip"].(string)
	if ip == "" {
		t.Fatalf("pod %s has no IP", podID)
	}
	return ip
}

var configSeq atomic.Int64

// writeJSON writes v (a string, []byte or anything encoding/json takes) to
// a new file under Dir/configs and returns its path.
func (e *Env) writeJSON(kind string, v any) (string, error) {
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	case []byte:
		data = v
	default:
		var err error
		if data, err = json.MarshalIndent(v, "", "  "); err != nil {
			return "", fmt.Errorf("encode %s config: %w", kind, err)
		}
	}
	dir := filepath.Join(e.Dir, "configs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, fmt.Sprintf("%s-%d.json", kind, configSeq.Add(1)))
	return p, os.WriteFile(p, data, 0o600)
}

// PodConfig returns a PodSandboxConfig (as crictl reads it) for a pod with
// a fresh UID, its log directory under PodLogDir and the Env's cgroup
// parent. Tests add to it (linux.security_context, dns_config, ...).
func (e *Env) PodConfig(name, namespace string, annotations map[string]string) map[string]any {
	uid := newUID()
	if annotations == nil {
		annotations = map[string]string{}
	}
	return map[string]any{
		"metadata": map[string]any{
			"name":      name,
			"namespace": namespace,
			"uid":       uid,
			"attempt":   0,
		},
		"hostname":      name,
		"log_directory": filepath.Join(e.PodLogDir, namespace+"_"+name+"_"+uid),
		"annotations":   annotations,
		"labels":        map[string]string{"critest": "true"},
		"linux": map[string]any{
			"cgroup_parent": e.CgroupParent,
		},
	}
}

// ContainerConfig returns a ContainerConfig (as crictl reads it) running
// command in image, logging to <name>.log in the pod's log directory.
// Tests add to it ("mounts", "envs", "args", "linux", ...).
func (e *Env) ContainerConfig(name, image string, command []string) map[string]any {
	c := map[string]any{
		"metadata": map[string]any{"name": name, "attempt": 0},
		"image":    map[string]any{"image": image},
		"log_path": name + ".log",
		"linux":    map[string]any{},
	}
	if len(command) > 0 {
		c["command"] = command
	}
	return c
}

// Mount returns a container mount (for a ContainerConfig's "mounts") of the
// host path at containerPath.
func Mount(hostPath, containerPath string, readOnly bool) map[string]any {
	return map[string]any{"host_path": hostPath, "container_path": containerPath, "readonly": readOnly}
}

func newUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
