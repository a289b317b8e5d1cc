package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/integration/testimages"
)

// TestWritableLayer: what a store-path container writes, in /, /tmp and
// /var/tmp, lands in its snapshot's writable layer, which CRI reports in
// ContainerStats (kubelet's ephemeral-storage accounting and eviction),
// not on the node's /run where containerd keeps the bundles; it is gone
// with the container. A read-only root still works, and a placeholder
// image that cannot hold the skeleton fails the start clearly, leaving
// no mount.
func TestWritableLayer(t *testing.T) {
	setup(t)
	testWritableLayer(t, "")
}

// TestWritableLayerContainerd17: the same under containerd 1.7 (task API v2).
func TestWritableLayerContainerd17(t *testing.T) {
	critest.Require17(t)
	setup(t)
	testWritableLayer(t, critest.Containerd17Version)
}

// badPlaceholder is a placeholder image whose /run is a file, where the
// skeleton needs a directory.
const badPlaceholder = "docker.io/library/storepkg-bad-placeholder:test"

func testWritableLayer(t *testing.T, containerd string) {
	url, _, _ := serveCache(t)
	badImage := filepath.Join(t.TempDir(), "bad.tar")
	if err := testimages.Write(badImage, badPlaceholder, []testimages.File{{Path: "/run", Data: []byte("not a directory\n"), Mode: 0o644}}, v1.Config{}); err != nil {
		t.Fatal(err)
	}
	env := critest.Start(t, critest.Options{
		Containerd: containerd,
		ShimPath:   fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url},
			"TrustedPublicKeys": []string{fixture.key.Public},
		},
		Images: []string{badImage},
		// Snapshot usage every second, not every 10 (CRI's default).
		Config: func(cfg map[string]any) {
			plugins := cfg["plugins"].(map[string]any)
			if containerd == critest.Containerd17Version {
				plugins["io.containerd.grpc.v1.cri"].(map[string]any)["stats_collect_period"] = 1
			} else {
				plugins["io.containerd.cri.v1.images"].(map[string]any)["stats_collect_period"] = 1
			}
		},
	})
	fx := fixture.fx

	pod := env.PodConfig("writable", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	// As root, to write in / (the placeholder image's user, 65535, may
	// write only in /tmp and /var/tmp).
	app := env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"})
	app["linux"] = map[string]any{"security_context": map[string]any{"run_as_user": map[string]any{"value": 0}}}
	id, err := env.CreateContainer(t, podID, app, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)

	assertClosureView(t, env, id, fx)
	for _, d := range []string{"/tmp", "/var/tmp"} {
		if out := env.Exec(t, id, "ls", "-ld", d); !strings.HasPrefix(out, "drwxrwxrwt") {
			t.Errorf("%s: %q, want mode 1777", d, out)
		}
	}

	const size = 8 << 20
	written := []string{"/big", "/tmp/big", "/var/tmp/big"}
	runUsed := usedBytes(t, env.StateDir)
	for _, p := range written {
		env.Exec(t, id, "sh", "-c", fmt.Sprintf("head -c %d /dev/zero > %s", size, p))
	}
	if grown := usedBytes(t, env.StateDir) - runUsed; grown >= size {
		t.Errorf("containerd's state tmpfs (the node's /run) grew by %d bytes while the container wrote %d", grown, 3*size)
	}
	used := waitWritableLayer(t, env, id, 3*size, 30*time.Second)
	t.Logf("CRI's writable layer of the container: %d bytes used (%d written)", used, 3*size)

	// The container's root is its snapshot, mounted by runc's task
	// service; what it wrote is in the snapshot's upper directory.
	bundleRootfs := filepath.Join(env.StateDir, "io.containerd.runtime.v2.task", critest.Namespace, id, "rootfs")
	fstype, upper := mountOf(t, bundleRootfs)
	if fstype != "overlay" || !filepath.IsAbs(upper) || !strings.HasPrefix(upper, env.Root) {
		t.Fatalf("the container's rootfs %s: %s mount, upperdir %q; want containerd's overlay snapshot", bundleRootfs, fstype, upper)
	}
	for _, p := range written {
		if fi, err := os.Stat(filepath.Join(upper, p)); err != nil || fi.Size() != size {
			t.Errorf("%s in the writable layer (%s): %v, %v", p, upper, fi, err)
		}
	}

	// A read-only root: nothing can be written, the closure runs.
	ro := env.ContainerConfig("ro", critest.PauseImage, []string{"hello-dyn", "read-only"})
	ro["linux"] = map[string]any{"security_context": map[string]any{"readonly_rootfs": true}}
	roID, err := env.CreateContainer(t, podID, ro, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, roID)
	env.WaitLogs(t, roID, "hello from read-only, linked dynamically", 30*time.Second)
	for _, p := range []string{"/x", "/tmp/x", "/var/tmp/x"} {
		if out, err := env.ExecErr(roID, "touch", p); err == nil {
			t.Errorf("read-only root: touch %s succeeded: %s", p, out)
		}
	}
	assertClosureView(t, env, roID, fx)

	// A placeholder image that cannot hold the skeleton: the start fails
	// naming the path, and leaves no mount.
	badID, err := env.CreateContainer(t, podID, env.ContainerConfig("bad", badPlaceholder, []string{"sleep", "3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := env.CrictlErr("start", badID); err == nil {
		t.Errorf("a container on a placeholder image with a file at /run started: %s", out)
	} else if !strings.Contains(err.Error(), "skeleton directory /run") || !strings.Contains(err.Error(), badPlaceholder) {
		t.Errorf("start on a placeholder image with a file at /run: %v; want an error naming the image and /run", err)
	} else {
		t.Logf("start on a bad placeholder image: %v", err)
	}
	if ms, _ := mountsMentioning(badID); len(ms) > 0 {
		t.Errorf("mounts left by the failed start: %v", ms)
	}

	for _, c := range []string{id, roID} {
		env.Stop(t, c)
	}
	for _, c := range []string{id, roID, badID} {
		env.Rm(t, c)
	}
	// The snapshot goes with the container, its writable layer removed by
	// containerd's garbage collector soon after.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, err := os.Stat(upper)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the container's writable layer %s 30s after rm: %v", upper, err)
			break
		}
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	for _, c := range []string{id, roID, badID} {
		assertNothingLeft(t, env, c)
	}
	if ms := env.Mounts(); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	assertRoots(t, env, 0, "after rm")
}

// mountOf returns the file system type and, for an overlay, the upper
// directory of the mount at target.
func mountOf(t *testing.T, target string) (fstype, upper string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[4] != target {
			continue
		}
		_, after, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		sep := strings.Fields(after) // fstype source superoptions
		if len(sep) < 3 {
			continue
		}
		fstype = sep[0]
		for _, o := range strings.Split(sep[2], ",") {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			}
		}
	}
	if fstype == "" {
		t.Fatalf("nothing mounted at %s", target)
	}
	return fstype, upper
}

// mountsMentioning lists the mount points whose path contains s.
func mountsMentioning(s string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if fields := strings.Fields(line); len(fields) >= 5 && strings.Contains(fields[4], s) {
			out = append(out, fields[4])
		}
	}
	return out, nil
}

// usedBytes is how much of the file system at dir is in use.
func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// waitWritableLayer waits until CRI's ContainerStats reports at least
// want bytes in the container's writable layer, and returns the figure.
func waitWritableLayer(t *testing.T, env *critest.Env, id string, want int64, timeout time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var used int64
	for {
		out := env.Crictl(t, "stats", "--output", "json", "--id", id)
		var stats struct {
			Stats []struct {
				WritableLayer struct {
					UsedBytes struct {
						Value json.RawMessage `json:"value"`
					} `json:"usedBytes"`
				} `json:"writableLayer"`
			} `json:"stats"`
		}
		if err := json.Unmarshal([]byte(out), &stats); err != nil || len(stats.Stats) != 1 {
			t.Fatalf("crictl stats %s: %v\n%s", id, err, out)
		}
		// protojson writes a uint64 as a string.
		v := strings.Trim(string(stats.Stats[0].WritableLayer.UsedBytes.Value), `"`)
		if v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("crictl stats %s: writable layer usedBytes %q: %v", id, v, err)
			}
			used = n
		}
		if used >= want {
			return used
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRI reports %d bytes in the writable layer of %s %v after the container wrote %d; want at least that\n%s", used, id, timeout, want, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
