package integration

// Chaos: the store's filesystem full while a NAR is unpacked and while
// the store view is built; once space is freed, the retried start runs.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/tmpfstest"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/store/views"
	"github.com/storepkg/storepkg/pkg/storepath"
)

func diskScenarios() []chaosScenario {
	return []chaosScenario{
		{name: "disk-full-during-unpack", run: diskFullUnpack},
		{name: "disk-full-during-view-build", run: diskFullViewBuild},
	}
}

// chaosStoreSize is the tmpfs the disk scenarios put the store on.
const chaosStoreSize = 64 << 20

// diskFullUnpack: the store's filesystem has room for half the closure.
// The fetch fails saying so, nothing half-unpacked stays; once space is
// freed, the retried container start fetches and runs.
func diskFullUnpack(t *testing.T, r *chaosRun) {
	fx := fixture.fx
	storeRoot := tmpfstest.Mount(t, chaosStoreSize)
	cache := serveFaultCache(t, fixture.cache)
	env := r.start(chaosOptions{substituters: []string{cache.URL}, storeRoot: storeRoot})
	var need int64
	for _, p := range fx.Closure {
		need += int64(readNarInfo(t, fixture.cache, p).NarSize)
	}
	filler := fillLeaving(t, r, storeRoot, need/2)

	pod := env.PodConfig("chaos", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	rec := waitFetchEnded(t, r.statusDir, "chaos")
	if rec.State != fetchrecord.Failed {
		t.Fatalf("the prefetch on a full disk: %s, want failed", rec.State)
	}
	cmd, want := helloCmd("chaos")
	err := startErr(t, env, podID, pod, cmd)
	if err == nil {
		t.Fatal("the container started on a full disk")
	}
	checkStartError(t, r, err, "no space left on device", "code = ResourceExhausted")
	if left := halfWritten(t, storeRoot); len(left) > 0 {
		t.Errorf("half-written entries after the failed fetch: %v", left)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r.fault()
	runContainer(t, env, podID, pod, cmd, want, 2*time.Minute)
	r.markRecovered()
	deletePod(t, env, podID)
}

// diskFullViewBuild: the closure is fetched, then the filesystem fills
// before the store view is built (the test holds the view's lock, as a
// concurrent builder would, until it is full). The build fails saying so
// and leaves no partial view; once space is freed, the retried start
// builds the view and runs.
func diskFullViewBuild(t *testing.T, r *chaosRun) {
	fx := fixture.fx
	storeRoot := tmpfstest.Mount(t, chaosStoreSize)
	cache := serveFaultCache(t, fixture.cache)
	env := r.start(chaosOptions{substituters: []string{cache.URL}, storeRoot: storeRoot})
	var closure []storepath.Path
	for _, p := range fx.Closure {
		sp, err := storepath.Parse(p)
		if err != nil {
			t.Fatal(err)
		}
		closure = append(closure, sp)
	}
	viewsDir := filepath.Join(storeRoot, views.Dir)
	if err := os.MkdirAll(viewsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	lock, _, err := storefs.Acquire(context.Background(), filepath.Join(viewsDir, views.Key(closure)+".lock"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()

	pod := env.PodConfig("chaos", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	if rec := waitFetchEnded(t, r.statusDir, "chaos"); rec.State != fetchrecord.Done {
		t.Fatalf("the prefetch: %s, want done", rec.State)
	}
	filler := fillLeaving(t, r, storeRoot, 0)
	lock.Release()
	cmd, want := helloCmd("chaos")
	err = startErr(t, env, podID, pod, cmd)
	if err == nil {
		t.Fatal("the container started with its view on a full disk")
	}
	checkStartError(t, r, err, "no space left on device", "code = ResourceExhausted")
	if b := viewBuilds(storeRoot); len(b) > 0 {
		t.Errorf("partial view builds left: %v", b)
	}
	if _, err := os.Stat(filepath.Join(viewsDir, views.Key(closure))); err == nil {
		t.Error("a view of the closure exists although its build failed")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r.fault()
	runContainer(t, env, podID, pod, cmd, want, 2*time.Minute)
	r.markRecovered()
	deletePod(t, env, podID)
}

// startErr creates and starts a container that is expected to fail (the
// shim prepares it at start), removes it, and returns the error.
func startErr(t *testing.T, env *critest.Env, podID string, pod map[string]any, cmd []string) error {
	t.Helper()
	ctr := env.ContainerConfig("app", critest.PauseImage, cmd)
	ctr["metadata"] = map[string]any{"name": "app", "attempt": 100}
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		return err
	}
	_, err = env.CrictlErr("start", id)
	env.CrictlErr("rm", "--force", id)
	return err
}

// checkStartError checks a failed container start says what and has the
// gRPC code wantCode (if not ""), and notes it.
func checkStartError(t *testing.T, r *chaosRun, err error, what, wantCode string) {
	t.Helper()
	msg := err.Error()
	if !strings.Contains(msg, what) {
		t.Errorf("the start error does not say %q:\n%v", what, err)
	}
	code := "?"
	if _, rest, ok := strings.Cut(msg, "code = "); ok {
		code, _, _ = strings.Cut(rest, " ")
	}
	if wantCode != "" && !strings.Contains(msg, wantCode) {
		t.Errorf("the start error is not %s:\n%v", wantCode, err)
	}
	r.note("start failed (%s): %s", code, errDesc(err))
}

// errDesc is the runtime's own words in a crictl error, shortened.
func errDesc(err error) string {
	desc := err.Error()
	if _, d, ok := strings.Cut(desc, "desc = "); ok {
		desc = d
	}
	desc, _, _ = strings.Cut(desc, "\n")
	desc = strings.TrimPrefix(desc, "failed to create containerd task: ")
	desc = strings.TrimPrefix(desc, "failed to create shim task: ")
	return shorten(desc, 240)
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// waitFetchEnded waits for the fetch record of pod to complete.
func waitFetchEnded(t *testing.T, dir, pod string) *fetchrecord.Record {
	t.Helper()
	var rec *fetchrecord.Record
	waitFor(t, "completed fetch record of pod "+pod, time.Minute, func() bool {
		rs := recordsOf(readRecords(t, dir), pod)
		if len(rs) == 1 && rs[0].Completed() {
			rec = rs[0]
			return true
		}
		return false
	})
	return rec
}

// halfWritten lists the temporary and unregistered entries of nix/store.
func halfWritten(t *testing.T, root string) []string {
	t.Helper()
	left := invalidEntries(t, root)
	for _, e := range storeEntries(t, root) {
		if strings.HasSuffix(e, ".storepkg-tmp") {
			left = append(left, e)
		}
	}
	return left
}

// fillLeaving writes a file beside the store so that its filesystem has
// leave bytes available (0: full), and returns the file.
func fillLeaving(t *testing.T, r *chaosRun, dir string, leave int64) string {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	avail := int64(fs.Bavail) * fs.Bsize
	if avail <= leave {
		t.Fatalf("%s has only %d bytes available, want to leave %d", dir, avail, leave)
	}
	name := filepath.Join(dir, "filler")
	r.beforeEnd(func() { os.Remove(name) })
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := avail - leave; n > 0; {
		w, err := f.Write(buf[:min(n, int64(len(buf)))])
		n -= int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return name
}
