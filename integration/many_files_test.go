package integration

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store/views"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// manyFiles is a closure of 100,000 files written to a signed cache: 50
// paths, a toolchain-like one of 80,000 files in 80 directories, 9 of
// 2,000 files in 8 directories and 40 of 50 files in 2, the root among
// these referring to the other 49. With views.BindEntries at 256, the
// first 10 are bound over the view, the 40 small ones linked.
type manyFiles struct {
	root  storepath.Path
	all   []storepath.Path
	big   storepath.Path   // the 80,000-file path
	large []storepath.Path // the paths of more than views.BindEntries entries
	files int
	key   string // the cache's public key
	dir   string // the cache
}

func writeManyFiles(tb testing.TB) *manyFiles {
	tb.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "many-files-1", Key: priv}
	mf := &manyFiles{dir: filepath.Join(tb.TempDir(), "cache"), key: key.Public().String()}
	w, err := cachetest.NewWriter(mf.dir, key, true)
	if err != nil {
		tb.Fatal(err)
	}
	src := tb.TempDir()
	add := func(name string, dirs, files int, refs []storepath.Path) storepath.Path {
		p := cachetest.MakePath("many-files", name)
		tree := filepath.Join(src, p.Base())
		for f := range files {
			d := filepath.Join(tree, fmt.Sprintf("d%02d", f%dirs))
			if f < dirs {
				if err := os.MkdirAll(d, 0o755); err != nil {
					tb.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", f)), []byte(name+" "+strconv.Itoa(f)+"\n"), 0o644); err != nil {
				tb.Fatal(err)
			}
		}
		if _, err := w.Add(p, tree, refs); err != nil {
			tb.Fatal(err)
		}
		if err := os.RemoveAll(tree); err != nil {
			tb.Fatal(err)
		}
		mf.all = append(mf.all, p)
		mf.files += files
		return p
	}
	mf.big = add("toolchain", 80, 80000, nil)
	deps := []storepath.Path{mf.big}
	for i := range 9 {
		deps = append(deps, add(fmt.Sprintf("runtime-%d", i), 8, 2000, nil))
	}
	mf.large = slices.Clone(deps)
	for i := range 39 {
		deps = append(deps, add(fmt.Sprintf("lib-%02d", i), 2, 50, nil))
	}
	mf.root = add("app", 2, 50, deps)
	return mf
}

// TestManyFilesClosure: a pod on a closure of 100,000 files, one path
// of 80,000. Its /nix/store shows exactly the closure, every file of the
// large paths (bound over the view, not linked) and of the small ones
// (linked), read-only, nosuid, nodev; nothing is mounted on the node
// for it, before or after; the node store stays valid for real Nix.
func TestManyFilesClosure(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	mf := writeManyFiles(t)
	synthetic := nixtest.Serve(t, mf.dir, nil)
	env := startEnv(t, []string{url, synthetic}, []string{fixture.key.Public, mf.key})
	viewsDir := filepath.Join(env.StoreRoot, views.Dir)

	pod := env.PodConfig("many-files", "default", paths(mf.root.Absolute(), fixture.fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)

	want := baseNames(nixtest.QueryClosure(t, fixture.fx.Store, fixture.fx.Tools))
	for _, p := range mf.all {
		want = append(want, p.Base())
	}
	slices.Sort(want)
	got := strings.Fields(env.Exec(t, id, "ls", "/nix/store"))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("/nix/store in the container:\n%v\nwant the closure:\n%v", got, want)
	}
	for _, p := range []storepath.Path{mf.big, mf.root} {
		out := strings.TrimSpace(env.Exec(t, id, "sh", "-c", "ls -R "+p.Absolute()+" | grep -c '^f[0-9]'"))
		n := 80000
		if p != mf.big {
			n = 50
		}
		if out != strconv.Itoa(n) {
			t.Errorf("%s: %s files in the container, want %d", p, out, n)
		}
	}
	if out := env.Exec(t, id, "cat", mf.big.Absolute()+"/d79/f79999"); out != "toolchain 79999\n" {
		t.Errorf("a file of the bound path reads %q", out)
	}
	for _, p := range []string{mf.big.Absolute() + "/new", mf.root.Absolute() + "/new", "/nix/store/new"} {
		if out, err := env.ExecErr(id, "touch", p); err == nil {
			t.Errorf("wrote %s in the store: %s", p, out)
		}
	}
	// The store: the view's bind and the large paths', all read-only,
	// nosuid, nodev.
	var storeMounts []string
	for _, line := range strings.Split(env.Exec(t, id, "cat", "/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(line); len(f) > 5 && strings.HasPrefix(f[4], "/nix/store") {
			storeMounts = append(storeMounts, f[4])
			if opts := "," + f[5] + ","; !strings.Contains(opts, ",ro,") || !strings.Contains(opts, ",nosuid,") || !strings.Contains(opts, ",nodev,") {
				t.Errorf("%s mounted %s, want ro,nosuid,nodev", f[4], f[5])
			}
		}
	}
	wantMounts := []string{"/nix/store"}
	for _, p := range mf.large {
		wantMounts = append(wantMounts, p.Absolute())
	}
	slices.Sort(wantMounts[1:])
	if !slices.Equal(storeMounts, wantMounts) {
		t.Errorf("store mounts in the container %v, want %v", storeMounts, wantMounts)
	}
	assertNoMountsUnder(t, viewsDir)

	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
	assertNoMountsUnder(t, viewsDir)
	nixtest.Verify(t, env.StoreRoot)
}

// assertNoMountsUnder: nothing is mounted at or below dir on the node.
func assertNoMountsUnder(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			t.Errorf("mounted on the node under the views: %s", f[4])
		}
	}
}
