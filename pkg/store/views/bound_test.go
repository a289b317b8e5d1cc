package views

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// bigPath adds a directory path of n files in 4 directories to the
// store under root (Nix's modes and mtime).
func bigPath(t *testing.T, root string, n int) storepath.Path {
	t.Helper()
	p := storepath.Path("9f1a4w6h2p7gq0wzb5b6r0d4yh1s7m0x-toolchain")
	d := filepath.Join(root, "nix", "store", p.Base())
	for i := range n {
		sub := filepath.Join(d, fmt.Sprintf("d%d", i%4))
		must(t, os.MkdirAll(sub, 0o755))
		must(t, os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%d", i)), []byte(fmt.Sprint(i)), 0o444))
	}
	canonicalise(t, d)
	return p
}

func withBindEntries(t *testing.T, n int) {
	prev := BindEntries
	BindEntries = n
	t.Cleanup(func() { BindEntries = prev })
}

// TestStoreViewBound: a path of more than BindEntries entries is not
// linked: the view holds an empty directory for it and says it must be
// bound (View.Bound), on the acquire that builds the view and on every
// later one; a path of exactly BindEntries entries is linked.
func TestStoreViewBound(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	closure := fakeStore(t, root) // the directory path has 6 entries
	big := bigPath(t, root, 40)
	closure = append(closure, big)
	withBindEntries(t, 6)

	v, err := Acquire(ctx, root, closure, User{Name: "a", Alive: t.TempDir()})
	if err != nil || !v.Built {
		t.Fatalf("%+v %v", v, err)
	}
	if want := []string{big.Base()}; !slices.Equal(v.Bound, want) {
		t.Errorf("bound %v, want %v", v.Bound, want)
	}
	if entries, err := os.ReadDir(filepath.Join(v.StoreDir, big.Base())); err != nil || len(entries) != 0 {
		t.Errorf("the bound path's mount point: %v, %v; want an empty directory", entries, err)
	}
	if v.Files != 5 {
		t.Errorf("%d files linked, want the other paths' 5", v.Files)
	}
	checkView(t, root, v.StoreDir, closure[:3])
	again, err := Acquire(ctx, root, closure, User{Name: "b", Alive: t.TempDir()})
	if err != nil || again.Built || !slices.Equal(again.Bound, v.Bound) {
		t.Errorf("second acquire: %+v, %v; want the built view with the same bound paths", again, err)
	}
	// Nothing of the view is a mount on the node.
	if mounted := mountsUnder(t, filepath.Join(root, Dir)); len(mounted) != 0 {
		t.Errorf("mounts on the node: %v", mounted)
	}
}

// TestStoreViewBoundContainer: the view and its bound paths mounted the
// way runc mounts the spec's entries (mount.BuildShared, then
// mount.BindStorePaths), in a mount namespace of their own as a
// container's: the store shows exactly the closure with every file,
// nothing is writable, and nothing is mounted on the node, before or
// after the namespace goes; Prune then removes the view whole.
func TestStoreViewBoundContainer(t *testing.T) {
	testenv.Root(t, "mount a view in a mount namespace")
	ctx := context.Background()
	root := t.TempDir()
	closure := fakeStore(t, root)
	big := bigPath(t, root, 300)
	other := bigPath2(t, root)
	closure = append(closure, big, other)
	bigPathNamed(t, root, "2b3c4d5f6g7h8i9j0k1l2m3n4p5q6r7s-unrelated", 300) // in the store, not in the closure
	withBindEntries(t, 100)
	alive := t.TempDir()
	v, err := Acquire(ctx, root, closure, User{Name: "a", Alive: alive})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{big.Base(), other.Base()}; !slices.Equal(v.Bound, sorted(want)) {
		t.Fatalf("bound %v, want %v", v.Bound, want)
	}
	host := filepath.Join(root, "nix", "store")
	target := filepath.Join(t.TempDir(), "store")
	must(t, os.Mkdir(target, 0o755))

	inNamespace(t, func() {
		mountRO(t, v.StoreDir, target)
		for _, name := range v.Bound {
			mountRO(t, filepath.Join(host, name), filepath.Join(target, name))
		}
		entries, err := os.ReadDir(target)
		must(t, err)
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if want := baseNames(closure); !slices.Equal(got, want) {
			t.Errorf("the container's store holds %v, want exactly %v", got, want)
		}
		// Every entry of every path, linked or bound, as in the store.
		for _, p := range closure {
			var want, got []string
			walk(t, filepath.Join(host, p.Base()), &want)
			walk(t, filepath.Join(target, p.Base()), &got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: the container sees %d entries, the store has %d", p, len(got), len(want))
			}
		}
		for _, p := range []string{filepath.Join(target, "new"), filepath.Join(target, big.Base(), "new"), filepath.Join(target, closure[0].Base(), "new")} {
			if err := os.WriteFile(p, nil, 0o644); !errors.Is(err, unix.EROFS) {
				t.Errorf("writing %s: %v, want EROFS", p, err)
			}
		}
		var st unix.Statfs_t
		must(t, unix.Statfs(filepath.Join(target, big.Base()), &st))
		if want := int64(unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV); st.Flags&want != want {
			t.Errorf("bound path mounted with flags %#x, want ro,nosuid,nodev", st.Flags)
		}
		if mounted := mountsUnder(t, filepath.Join(root, Dir)); len(mounted) != 0 {
			t.Errorf("mounts under the views in the container's namespace: %v", mounted)
		}
	})
	if mounted := mountsUnder(t, filepath.Dir(target)); len(mounted) != 0 {
		t.Errorf("mounts left on the node: %v", mounted)
	}
	must(t, Release(root, v.Key, "a"))
	res, err := Prune(ctx, root, PruneOptions{Unused: true})
	if err != nil || len(res.Removed) != 1 {
		t.Fatalf("prune: %+v, %v", res, err)
	}
	if left, _ := os.ReadDir(filepath.Join(root, Dir)); len(left) != 0 {
		t.Errorf("left in views: %v", left)
	}
}

func bigPath2(t *testing.T, root string) storepath.Path {
	return bigPathNamed(t, root, "0c1d2f3g4h5i6j7k8l9m0n1p2q3r4s5v-runtime", 150)
}

func bigPathNamed(t *testing.T, root, base string, n int) storepath.Path {
	t.Helper()
	p := storepath.Path(base)
	d := filepath.Join(root, "nix", "store", base)
	must(t, os.MkdirAll(filepath.Join(d, "lib"), 0o755))
	for i := range n {
		must(t, os.WriteFile(filepath.Join(d, "lib", fmt.Sprintf("f%d", i)), []byte(base), 0o444))
	}
	canonicalise(t, d)
	return p
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// walk lists the tree at dir, relative names, in walk order.
func walk(t *testing.T, dir string, out *[]string) {
	t.Helper()
	filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		must(t, err)
		rel, _ := filepath.Rel(dir, p)
		*out = append(*out, rel)
		return nil
	})
}

// inNamespace runs f on a thread in a mount namespace of its own, as a
// container's, private so nothing propagates to the node; the thread
// and its namespace end with f.
func inNamespace(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			t.Errorf("make / private: %v", err)
			return
		}
		f()
	}()
	<-done
}

// mountRO binds src at dst read-only, nosuid, nodev, as runc does for
// the spec's "rbind", "ro", "nosuid", "nodev".
func mountRO(t *testing.T, src, dst string) {
	t.Helper()
	must(t, unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""))
	must(t, unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""))
}

// mountsUnder lists this thread's mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/thread-self/mountinfo")
	must(t, err)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}
