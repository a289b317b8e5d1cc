package integration

// Chaos: SIGKILL of the fetch child, of the shim and of containerd at
// several moments of a pod's start, and a node reboot.

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store/views"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// The moments a process is killed at.
const (
	momentFirstByte = "before-first-byte" // the first NAR's response held before its headers
	momentMidNAR    = "mid-nar"           // the largest NAR held after half its bytes
	momentRegister  = "during-register"   // paths renamed into place, their registration waiting for the database
	momentViewBuild = "during-view-build" // the shim building the closure's store view
)

func killScenarios() []chaosScenario {
	var out []chaosScenario
	for _, victim := range []string{"fetch-child", "shim", "containerd"} {
		for _, moment := range []string{momentFirstByte, momentMidNAR, momentRegister, momentViewBuild} {
			if victim == "fetch-child" && moment == momentViewBuild {
				// The shim builds the view once the child has exited.
				continue
			}
			out = append(out, chaosScenario{
				name: "kill-" + victim + "-" + moment,
				run:  func(t *testing.T, r *chaosRun) { killAt(t, r, victim, moment, false) },
			})
		}
	}
	// Killed and never retried: the pod is deleted instead, so no rerun
	// of the fetch clears what the child was writing; the agent must.
	out = append(out, chaosScenario{
		name: "kill-fetch-child-mid-nar-pod-deleted",
		run:  func(t *testing.T, r *chaosRun) { killAt(t, r, "fetch-child", momentMidNAR, true) },
	})
	return out
}

// sharedSynthetic is a synthetic closure of some paths in its own signed
// cache, built once per test binary.
type sharedSynthetic struct {
	name  string
	paths int

	once sync.Once
	err  error
	dir  string
	root storepath.Path
	key  narinfo.SecretKey
}

var (
	// bigClosure has enough paths that building its store view takes
	// long enough to be killed in the middle.
	bigClosure   = &sharedSynthetic{name: "viewbuild", paths: 3000}
	smallClosure = &sharedSynthetic{name: "small", paths: 12}
)

// get builds the cache on first use and returns its directory, the
// closure's root and the public key that signs it.
func (c *sharedSynthetic) get(t *testing.T) (dir string, root storepath.Path, key string) {
	t.Helper()
	c.once.Do(func() {
		c.dir = filepath.Join(fixture.dir, "synthetic-"+c.name)
		c.root, _, c.key, c.err = writeSynthetic(c.dir, c.name, c.paths)
	})
	if c.err != nil {
		t.Fatal(c.err)
	}
	return c.dir, c.root, c.key.Public().String()
}

// largestNAR returns the URL and compressed size of the largest NAR of
// paths in the cache at dir.
func largestNAR(t *testing.T, dir string, paths []string) (url string, size int64) {
	t.Helper()
	url, size, _ = largestNARPath(t, dir, paths)
	return url, size
}

// largestNARPath is largestNAR with the path whose NAR it is.
func largestNARPath(t *testing.T, dir string, paths []string) (url string, size int64, path storepath.Path) {
	t.Helper()
	for _, p := range paths {
		ni := readNarInfo(t, dir, p)
		if int64(ni.FileSize) > size {
			url, size, path = ni.URL, int64(ni.FileSize), ni.StorePath
		}
	}
	if url == "" {
		t.Fatalf("no NAR of %v in %s", paths, dir)
	}
	return url, size, path
}

func readNarInfo(t *testing.T, dir, path string) *narinfo.NarInfo {
	t.Helper()
	sp, err := storepath.Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, sp.HashPart()+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ni, err := narinfo.Parse(f)
	if err != nil {
		t.Fatalf("%s: %v", f.Name(), err)
	}
	return ni
}

// viewBuilds lists the store views being built (or whose build was
// interrupted).
func viewBuilds(root string) []string {
	var out []string
	for _, n := range dirNames(filepath.Join(root, views.Dir)) {
		if strings.HasPrefix(n, ".build-") {
			out = append(out, n)
		}
	}
	return out
}

// killAt starts a pod, kills victim at moment, lets the fault go, and
// does what kubelet does next: retry the container (a killed fetch
// child), replace the pod (a killed shim takes its pod with it), or wait
// for containerd to be back and go on (a killed containerd). With
// podDeleted, the pod is deleted after the kill instead.
func killAt(t *testing.T, r *chaosRun, victim, moment string, podDeleted bool) {
	fx := fixture.fx
	cache := serveFaultCache(t, fixture.cache)
	subs, keys := []string{cache.URL}, []string{fixture.key.Public}
	rootPaths := []string{fx.Hello, fx.Tools}
	cmd, want := helloCmd("chaos")
	watched := cache // the cache whose NARs are held
	if moment == momentViewBuild {
		dir, root, key := bigClosure.get(t)
		big := serveFaultCache(t, dir)
		subs, keys = append(subs, big.URL), append(keys, key)
		rootPaths = []string{root.Absolute(), fx.Tools}
		cmd, want = []string{"sh", "-c", "echo view ok; exec sleep 3600"}, "view ok"
		watched = big
	}
	env := r.start(chaosOptions{substituters: subs, keys: keys})

	var rule *faultRule
	var held storepath.Path // mid-NAR: the path whose NAR is held
	switch moment {
	case momentFirstByte, momentRegister:
		rule = watched.add(firstNAR, fault{holdHeaders: true}, 1)
	case momentMidNAR:
		var url string
		var size int64
		url, size, held = largestNARPath(t, fixture.cache, fx.Closure)
		rule = watched.add(narOf(url), fault{hold: true, afterBytes: size / 2}, 1)
	}
	pod := env.PodConfig("chaos", "default", paths(rootPaths...))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)

	var releaseDB func()
	switch moment {
	case momentFirstByte, momentMidNAR:
		select {
		case <-rule.Reached():
		case <-time.After(30 * time.Second):
			t.Fatalf("the prefetch did not reach the %s moment in 30s", moment)
		}
		if moment == momentMidNAR {
			// The half sent, the child is unpacking it.
			tmp := filepath.Join(r.storeRoot, "nix/store", held.HashPart()+"-"+held.Name()+".storepkg-tmp")
			waitFor(t, "unpacking of "+held.Base(), 30*time.Second, func() bool {
				entries, err := os.ReadDir(tmp)
				return err == nil && len(entries) > 0
			})
		}
	case momentRegister:
		select {
		case <-rule.Reached():
		case <-time.After(30 * time.Second):
			t.Fatal("the prefetch requested no NAR in 30s")
		}
		// The child opened the database before its first NAR: hold the
		// write lock, then let the downloads go.
		releaseDB = holdDBWriteLock(t, r.storeRoot)
		rule.Release()
		waitFor(t, "path renamed into place and waiting for its registration", 60*time.Second, func() bool {
			return len(invalidEntries(t, r.storeRoot)) > 0
		})
	case momentViewBuild:
		waitFor(t, "store view build", 120*time.Second, func() bool { return len(viewBuilds(r.storeRoot)) > 0 })
	}

	r.fault()
	switch victim {
	case "fetch-child":
		pid := fetchChild(r.storeRoot)
		if pid == 0 {
			t.Fatal("no fetch child at the moment of the kill")
		}
		killAndReap(t, r, pid, "fetch child")
	case "shim":
		pid, err := env.ShimPID(podID)
		if err != nil {
			t.Fatal(err)
		}
		killAndReap(t, r, pid, "shim")
	case "containerd":
		env.KillContainerd(t)
	}
	// What the kill interrupted, as found right after it.
	time.Sleep(100 * time.Millisecond)
	var at []string
	for _, e := range storeEntries(t, r.storeRoot) {
		if strings.HasSuffix(e, ".storepkg-tmp") {
			at = append(at, "temporary "+e)
		}
	}
	for _, e := range invalidEntries(t, r.storeRoot) {
		at = append(at, "unregistered "+e)
	}
	for _, b := range viewBuilds(r.storeRoot) {
		at = append(at, "view build "+b)
	}
	if len(at) > 0 {
		r.note("at the kill: %s", summarize(at, 4))
	} else {
		r.note("at the kill: nothing half-written in the store")
	}
	if moment == momentViewBuild && victim == "shim" && len(viewBuilds(r.storeRoot)) == 0 {
		t.Error("the view build was not interrupted (it ended before the kill): make bigClosure's paths more")
	}
	if rule != nil {
		rule.Release()
	}
	if releaseDB != nil {
		releaseDB()
	}

	switch {
	case podDeleted:
		deletePod(t, env, podID)
		waitFor(t, "fetch child gone", 30*time.Second, func() bool { return fetchChild(r.storeRoot) == 0 })
		r.markRecovered()
		return
	case victim == "fetch-child":
		id, errs := runContainer(t, env, podID, pod, cmd, want, 2*time.Minute)
		r.markRecovered()
		if len(errs) > 0 {
			r.note("%d failed starts before the retried fetch, first: %s", len(errs), errDesc(errs[0]))
		}
		_ = id
	case victim == "shim":
		// The pod died with its shim: kubelet removes it and runs it again.
		deletePod(t, env, podID)
		pod = env.PodConfig("chaos-again", "default", paths(rootPaths...))
		podID = env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		runContainer(t, env, podID, pod, cmd, want, 2*time.Minute)
		r.markRecovered()
	case victim == "containerd":
		env.RestartContainerd(t)
		// The shim and its fetch lived on; the pod goes on.
		_, errs := runContainer(t, env, podID, pod, cmd, want, 2*time.Minute)
		r.markRecovered()
		if len(errs) > 0 {
			r.note("%d failed starts after the restart, first: %s", len(errs), errDesc(errs[0]))
		}
	}
	deletePod(t, env, podID)
}

// killAndReap SIGKILLs pid and waits until its parent has reaped it. A
// shim's parent is the node's init (the shim daemonizes), which here may
// reap late; until then the dead shim is a zombie, which procid.Alive
// takes for alive, so its GC roots would not be swept yet.
func killAndReap(t *testing.T, r *chaosRun, pid int, what string) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s %d: %v", what, pid, err)
	}
	start := time.Now()
	waitFor(t, what+" reaped", 30*time.Second, func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		return err != nil
	})
	d := time.Since(start)
	if d > time.Second {
		r.note("the killed %s stayed a zombie for %v before its parent reaped it (not counted in the recovery)", what, d.Round(100*time.Millisecond))
	}
	// A node's init reaps at once: the wait is this machine's, not a
	// part of the recovery.
	r.faultAt = r.faultAt.Add(d)
}

func summarize(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:n], ", ") + ", and " + strconv.Itoa(len(items)-n) + " more"
}

func rebootScenarios() []chaosScenario {
	return []chaosScenario{{name: "node-reboot", run: rebootNode}}
}

// rebootNode: two pods run and a third is fetching (held mid-NAR) when
// the node reboots: every process is killed, /run is emptied. When
// containerd is back, kubelet removes the dead pods and runs them again;
// they run, and what the dead shims held goes with the agent's pass.
func rebootNode(t *testing.T, r *chaosRun) {
	fx := fixture.fx
	cache := serveFaultCache(t, fixture.cache)
	syn, synRoot, synKey := smallClosure.get(t)
	synCache := serveFaultCache(t, syn)
	env := r.start(chaosOptions{substituters: []string{cache.URL, synCache.URL}, keys: []string{fixture.key.Public, synKey}})
	url, size := largestNAR(t, syn, []string{synRoot.Absolute()})
	hold := synCache.add(narOf(url), fault{hold: true, afterBytes: size / 2}, 1)

	type podSpec struct {
		name  string
		paths []string
		cmd   []string
		want  string
	}
	helloCmdA, helloWant := helloCmd("before the reboot")
	specs := []podSpec{
		{"a", []string{fx.Hello, fx.Tools}, helloCmdA, helloWant},
		{"b", []string{fx.Tools}, []string{"sh", "-c", "echo b up; exec sleep 3600"}, "b up"},
	}
	for _, s := range specs {
		pod := env.PodConfig(s.name, "default", paths(s.paths...))
		id := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		runContainer(t, env, id, pod, s.cmd, s.want, time.Minute)
	}
	fetching := podSpec{"c", []string{synRoot.Absolute(), fx.Tools}, []string{"sh", "-c", "echo c up; exec sleep 3600"}, "c up"}
	env.RunPodSandbox(t, critest.HandlerStorepkg, env.PodConfig(fetching.name, "default", paths(fetching.paths...)))
	select {
	case <-hold.Reached():
	case <-time.After(30 * time.Second):
		t.Fatal("pod c's fetch did not reach its NAR's middle in 30s")
	}
	owners := len(dirNames(filepath.Join(r.storeRoot, "nix/var/storepkg/owners")))

	r.fault()
	env.Reboot(t)
	hold.Release()
	r.note("after the reboot: %d GC roots and %d owner records of the killed shims", len(dirNames(filepath.Join(r.storeRoot, "nix/var/nix/gcroots/storepkg"))), owners)

	// kubelet: the pods it finds dead go, and run again.
	out := env.Crictl(t, "pods", "--quiet")
	for _, id := range strings.Fields(out) {
		deletePod(t, env, id)
	}
	helloCmdA, helloWant = helloCmd("after the reboot")
	specs[0].cmd, specs[0].want = helloCmdA, helloWant
	var ids []string
	for _, s := range append(specs, fetching) {
		pod := env.PodConfig(s.name, "default", paths(s.paths...))
		id := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		runContainer(t, env, id, pod, s.cmd, s.want, 2*time.Minute)
		ids = append(ids, id)
	}
	r.markRecovered()
	for _, id := range ids {
		deletePod(t, env, id)
	}
}
