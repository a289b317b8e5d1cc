package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/store/views"
)

// TestSharedStoreView: two pods on the same closure share one store view,
// built once; the node store stays a valid Nix store (nix-store --optimise
// and --verify --check-contents) with the view beside it; once no
// container uses the view, `storepkg gc` removes it with the paths, and
// no link to the closure's files is left anywhere under the store root,
// so their space is back.
func TestSharedStoreView(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx
	viewsDir := filepath.Join(env.StoreRoot, views.Dir)

	var (
		podIDs  []string
		viewIno uint64
	)
	for i, name := range []string{"first", "second"} {
		pod := env.PodConfig(name, "default", paths(fx.Hello, fx.Tools))
		podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		podIDs = append(podIDs, podID)
		id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), pod)
		if err != nil {
			t.Fatal(err)
		}
		env.Start(t, id)
		got := strings.Fields(env.Exec(t, id, "ls", "/nix/store"))
		slices.Sort(got)
		if want := baseNames(fx.Closure); !slices.Equal(got, want) {
			t.Errorf("%s: /nix/store in the container:\n%v\nwant the closure:\n%v", name, got, want)
		}
		// One mount for the whole store, read-only, nosuid, nodev.
		mounts := env.Exec(t, id, "cat", "/proc/self/mountinfo")
		var storeMounts []string
		for _, line := range strings.Split(mounts, "\n") {
			if f := strings.Fields(line); len(f) > 5 && strings.HasPrefix(f[4], "/nix/store") {
				storeMounts = append(storeMounts, f[4]+" "+f[5])
			}
		}
		if len(storeMounts) != 1 || !strings.Contains(storeMounts[0], "ro") || !strings.Contains(storeMounts[0], "nosuid") || !strings.Contains(storeMounts[0], "nodev") {
			t.Errorf("%s: store mounts %v, want one ro,nosuid,nodev", name, storeMounts)
		}
		if out, err := env.ExecErr(id, "touch", fx.Hello+"/new"); err == nil {
			t.Errorf("%s: wrote into the store: %s", name, out)
		}
		entries, _ := filepath.Glob(filepath.Join(viewsDir, "*", "store"))
		if len(entries) != 1 {
			t.Fatalf("%s: views %v, want one", name, entries)
		}
		fi, err := os.Stat(entries[0])
		if err != nil {
			t.Fatal(err)
		}
		ino := fi.Sys().(*syscall.Stat_t).Ino
		if i == 0 {
			viewIno = ino
		} else if ino != viewIno {
			t.Errorf("the second pod rebuilt the view")
		}
		users, _ := filepath.Glob(filepath.Join(viewsDir, "*", "users", "*"))
		if len(users) != i+1 {
			t.Errorf("%s: view users %v, want %d", name, users, i+1)
		}
	}

	// The store is still Nix's, and Nix's optimiser does not disturb it.
	nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(env.StoreRoot), "--optimise")
	nixtest.Verify(t, env.StoreRoot)

	// The closure's files, by inode: store and view share them.
	inodes := map[uint64]string{}
	for _, p := range fx.Closure {
		filepath.Walk(filepath.Join(env.StoreRoot, p), func(path string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				inodes[fi.Sys().(*syscall.Stat_t).Ino] = path
			}
			return nil
		})
	}
	for _, podID := range podIDs {
		env.StopPod(t, podID)
		env.RmPod(t, podID)
	}
	if users, _ := filepath.Glob(filepath.Join(viewsDir, "*", "users", "*")); len(users) != 0 {
		t.Errorf("view users left after the pods are gone: %v", users)
	}

	bin := t.TempDir()
	critest.BuildProduct(t, bin, critest.CLIPackage)
	cli := filepath.Join(bin, "storepkg")
	// Let the shims exit: a live shim's temporary roots keep the closure.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command(cli, "gc", "--root", env.StoreRoot).CombinedOutput()
		if err != nil {
			t.Fatalf("storepkg gc: %v\n%s", err, out)
		}
		t.Logf("storepkg gc: %s", out)
		if len(nixtest.StoreEntries(t, env.StoreRoot)) <= 1 || time.Now().After(deadline) { // .links may stay
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if left, _ := os.ReadDir(viewsDir); len(left) != 0 {
		t.Errorf("left in the views directory after gc: %v", left)
	}
	survived := false
	for _, p := range fx.Closure {
		if _, err := os.Lstat(filepath.Join(env.StoreRoot, p)); err == nil {
			t.Errorf("%s survived gc", p)
			survived = true
		}
	}
	if survived {
		// Say what keeps it: a root left behind, or a process (runtime
		// roots are any process's on the machine).
		t.Logf("roots:\n%s", nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(env.StoreRoot), "--gc", "--print-roots"))
	}
	for _, dir := range []string{"nix/store", "nix/var/storepkg"} {
		filepath.Walk(filepath.Join(env.StoreRoot, dir), func(path string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				if orig, ok := inodes[fi.Sys().(*syscall.Stat_t).Ino]; ok {
					t.Errorf("%s still links %s's inode after gc", path, orig)
				}
			}
			return nil
		})
	}
	nixtest.Verify(t, env.StoreRoot)
}
