package integration

// Helpers of the pod benchmarks (pods_bench_test.go, sharing_bench_test.go):
// the benchmark closure of hack/mkbench-closure.sh, starting a pod and
// timing it to its first output, and making a node cold again.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/benchtest"
	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/pkg/store"
)

// benchClosure is the closure hack/mkbench-closure.sh builds with Nix
// (~130 paths, ~350 MB of files of Debian packages) in its zstd cache,
// plus the shim fixture's dynamically linked program and tools (also zstd).
type benchClosure struct {
	dir   string          // STOREPKG_BENCH_DIR
	key   string          // the bench cache's public key
	root  string          // the bench closure's root store path
	cache benchtest.Cache // narinfos of both caches
	dirs  []string        // both cache directories
}

func benchDir() string {
	if d := os.Getenv("STOREPKG_BENCH_DIR"); d != "" {
		return d
	}
	return "/var/tmp/storepkg-bench"
}

// loadBenchClosure needs setup() first (for the fixture).
func loadBenchClosure(b *testing.B) *benchClosure {
	b.Helper()
	dir := benchDir()
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		b.Skipf("no benchmark closure in %s: run hack/mkbench-closure.sh %s (make bench does)", dir, dir)
	}
	read := func(name string) string {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		return strings.TrimSpace(string(data))
	}
	bc := &benchClosure{dir: dir, key: read("public-key"), root: read("root-path")}
	bc.dirs = []string{filepath.Join(dir, "cache-zstd"), fixture.cache}
	var err error
	if bc.cache, err = benchtest.LoadCache(bc.dirs...); err != nil {
		b.Fatal(err)
	}
	return bc
}

// src is where a store path's tree is on this machine: the chroot store
// mkbench-closure.sh built into, or the fixture's.
func (bc *benchClosure) src(base string) string {
	p := filepath.Join(bc.dir, "build", "nix", "store", base)
	if _, err := os.Lstat(p); err == nil {
		return p
	}
	return filepath.Join(fixture.fx.Store, "nix", "store", base)
}

func (bc *benchClosure) storePaths(bases []string) []benchtest.StorePath {
	out := make([]benchtest.StorePath, len(bases))
	for i, base := range bases {
		out[i] = benchtest.StorePath{Base: base, Src: bc.src(base)}
	}
	return out
}

// find returns the absolute store path named name in the bench cache.
func (bc *benchClosure) find(b *testing.B, name string) string {
	b.Helper()
	base, err := bc.cache.Find(name)
	if err != nil {
		b.Fatal(err)
	}
	return "/nix/store/" + base
}

// podSpec is one way of running the same process in a pod.
type podSpec struct {
	label       string
	handler     string
	annotations map[string]string
	image       string // of the app container
	pull        bool   // crictl pull the image after runp, as kubelet does when it is missing
	command     []string
}

// podRun is one started pod and how long each step took.
type podRun struct {
	benchtest.PodRun
	PodID string
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// startPod runs spec's pod and container (crictl runp, [pull], create,
// start) and waits for want in the container's log, timing each step
// from before runp to the moment the line lands in the log file.
func startPod(env *critest.Env, s podSpec, name, want string) (podRun, error) {
	var r podRun
	pod := env.PodConfig(name, "default", s.annotations)
	logDir := pod["log_directory"].(string)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return r, err
	}
	w, err := benchtest.WatchDir(logDir)
	if err != nil {
		return r, err
	}
	defer w.Close()
	t0 := time.Now()
	if r.PodID, err = env.RunPodSandboxErr(s.handler, pod); err != nil {
		return r, err
	}
	t1 := time.Now()
	if s.pull {
		if _, err := env.CrictlErr("pull", s.image); err != nil {
			return r, err
		}
	}
	t2 := time.Now()
	id, err := env.CreateContainer(nopTB{}, r.PodID, env.ContainerConfig("app", s.image, s.command), pod)
	if err != nil {
		return r, err
	}
	t3 := time.Now()
	if _, err := env.CrictlErr("start", id); err != nil {
		return r, err
	}
	t4 := time.Now()
	t5, err := w.Wait("app.log", want, 5*time.Minute)
	if err != nil {
		return r, err
	}
	r.Runp, r.Pull, r.Create, r.Start, r.Output = ms(t1.Sub(t0)), ms(t2.Sub(t1)), ms(t3.Sub(t2)), ms(t4.Sub(t3)), ms(t5.Sub(t4))
	r.Total = ms(t5.Sub(t0))
	return r, nil
}

// nopTB lets startPod call critest helpers that take a testing.TB but
// return their error (CreateContainer) from other goroutines.
type nopTB struct{ testing.TB }

func (nopTB) Helper() {}

// removePod stops and removes a pod and waits until its shim has exited.
func removePod(b *testing.B, env *critest.Env, podID string) {
	b.Helper()
	shim, _ := env.ShimPID(podID)
	env.StopPod(b, podID)
	env.RmPod(b, podID)
	if shim > 0 {
		waitGone(b, shim)
	}
}

func waitGone(b *testing.B, pid int) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("shim %d still runs 30s after its pod was removed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wipeStore removes the node store (store paths, database, roots): the
// next storepkg shim starts from nothing. No storepkg pod may be running.
func wipeStore(b *testing.B, env *critest.Env) {
	b.Helper()
	nix := filepath.Join(env.StoreRoot, "nix")
	if err := store.RemoveTree(nix); err != nil {
		b.Fatal(err)
	}
	if _, err := os.Lstat(nix); !os.IsNotExist(err) {
		b.Fatalf("%s still there after removal: %v", nix, err)
	}
}

// contentBlob is where containerd keeps a blob.
func contentBlob(env *critest.Env, digest string) string {
	return filepath.Join(env.Root, "io.containerd.content.v1.content", "blobs", strings.Replace(digest, ":", "/", 1))
}

func snapshotCount(env *critest.Env) int {
	entries, _ := os.ReadDir(filepath.Join(env.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots"))
	return len(entries)
}

// removeImage removes an image through CRI and waits until containerd's
// garbage collector has deleted its layers' content and snapshots.
func removeImage(b *testing.B, env *critest.Env, ref string, layers []*benchtest.Layer, snapshotsBefore int) {
	b.Helper()
	env.Crictl(b, "rmi", ref)
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := 0
		for _, l := range layers {
			if _, err := os.Stat(contentBlob(env, l.Hash().String())); err == nil {
				left++
			}
		}
		n := snapshotCount(env)
		if left == 0 && n <= snapshotsBefore {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("30s after rmi %s: %d layer blobs and %d snapshots (%d before the pull) left", ref, left, n, snapshotsBefore)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitIdle waits for a quiet machine before a measurement and reports
// whether the machine was busy anyway.
func waitIdle() (busy bool) {
	return !benchtest.WaitIdle(benchtest.IdleWait(), 500*time.Millisecond)
}
