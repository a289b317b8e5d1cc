package views

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// fakeStore makes a store under root/nix/store shaped like Nix's: a
// directory path with nested directories, files and a symlink, a
// single-file path and a symlink path; modes 0444/0555, mtime 1. Paths
// already there are left alone.
func fakeStore(t *testing.T, root string) []storepath.Path {
	t.Helper()
	store := filepath.Join(root, "nix", "store")
	dirPath := storepath.Path("s66mzxpvicwk07gjbjfw9izjfa797vsw-hello")
	filePath := storepath.Path("p8nr66a4is8k7z2b977r95b55s3d2d5k-hello.sh")
	linkPath := storepath.Path("ap5lw0pk87zllpr8psdiqgxx50yqpp1h-alias")
	exists := func(p storepath.Path) bool {
		_, err := os.Lstat(filepath.Join(store, p.Base()))
		return err == nil
	}
	if d := filepath.Join(store, dirPath.Base()); !exists(dirPath) {
		must(t, os.MkdirAll(filepath.Join(d, "share", "doc"), 0o755))
		must(t, os.MkdirAll(filepath.Join(d, "bin"), 0o755))
		must(t, os.WriteFile(filepath.Join(d, "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o555))
		must(t, os.WriteFile(filepath.Join(d, "share", "doc", "README"), make([]byte, 64<<10), 0o444))
		must(t, os.Symlink("../bin/hello", filepath.Join(d, "share", "hello-link")))
		canonicalise(t, d)
	}
	if !exists(filePath) {
		must(t, os.WriteFile(filepath.Join(store, filePath.Base()), []byte("#!/bin/sh\n"), 0o555))
		canonicalise(t, filepath.Join(store, filePath.Base()))
	}
	if !exists(linkPath) {
		must(t, os.Symlink(dirPath.Absolute(), filepath.Join(store, linkPath.Base())))
		canonicalise(t, filepath.Join(store, linkPath.Base()))
	}
	return []storepath.Path{dirPath, filePath, linkPath}
}

// canonicalise sets mtime 1 and read-only modes, as Nix does.
func canonicalise(t *testing.T, root string) {
	t.Helper()
	var dirs []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		must(t, err)
		if fi.IsDir() {
			dirs = append(dirs, p)
		} else if fi.Mode().IsRegular() {
			must(t, os.Chmod(p, fi.Mode().Perm()&0o555))
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		must(t, os.Chmod(d, 0o555))
	}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		must(t, err)
		ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
		return nil
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func stat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return &st
}

// TestStoreView: the view recreates each closure path with the store's
// own inodes, modes and mtimes, and is built once for any number of
// concurrent users.
func TestStoreView(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	closure := fakeStore(t, root)
	host := filepath.Join(root, "nix", "store")

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		views []*View
	)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			alive := t.TempDir()
			v, err := Acquire(ctx, root, closure, User{Name: "c" + string(rune('0'+i)), Alive: alive})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			views = append(views, v)
			mu.Unlock()
		}()
	}
	wg.Wait()
	built := 0
	for _, v := range views {
		if v.Built {
			built++
		}
		if v.StoreDir != views[0].StoreDir {
			t.Errorf("two views: %s and %s", v.StoreDir, views[0].StoreDir)
		}
	}
	if built != 1 || len(views) != 4 {
		t.Fatalf("%d of %d acquires built the view, want 1", built, len(views))
	}
	vs := views[0].StoreDir
	entries, _ := os.ReadDir(vs)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := baseNames(closure); !slices.Equal(names, want) {
		t.Errorf("view holds %v, want %v", names, want)
	}
	// Same inode for every non-directory; directories with the store's
	// mode and mtime.
	filepath.Walk(filepath.Join(host, closure[0].Base()), func(p string, fi os.FileInfo, err error) error {
		must(t, err)
		rel, _ := filepath.Rel(host, p)
		hs, vs := stat(t, p), stat(t, filepath.Join(vs, rel))
		if fi.IsDir() {
			if hs.Mode != vs.Mode || vs.Mtim.Sec != 1 || hs.Ino == vs.Ino {
				t.Errorf("%s: view dir mode %o mtime %d, store %o", rel, vs.Mode, vs.Mtim.Sec, hs.Mode)
			}
		} else if hs.Ino != vs.Ino {
			t.Errorf("%s: not the store's inode", rel)
		}
		return nil
	})
	for _, p := range closure[1:] {
		if stat(t, filepath.Join(host, p.Base())).Ino != stat(t, filepath.Join(vs, p.Base())).Ino {
			t.Errorf("%s: not the store's inode", p)
		}
	}
	if v, err := Ensure(ctx, root, closure); err != nil || v.Built {
		t.Errorf("Ensure of a built view: %+v, %v", v, err)
	}
	if users, _ := os.ReadDir(filepath.Join(root, Dir, views[0].Key, "users")); len(users) != 4 {
		t.Errorf("%d users, want 4", len(users))
	}

}

// TestStoreViewLifecycle: leftovers of a crashed build are cleaned, a
// view is kept while used and while it matches the store, and removed
// (its space freed) once unused and its paths are deleted; a path
// substituted again makes a new view, the old one retired while in use.
func TestStoreViewLifecycle(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	closure := fakeStore(t, root)
	host := filepath.Join(root, "nix", "store")
	views := filepath.Join(root, Dir)
	key := Key(closure)

	// A build that crashed halfway, and a deletion that did.
	must(t, os.MkdirAll(filepath.Join(views, ".build-"+key+"-1-x", "store", "junk"), 0o555))
	must(t, os.MkdirAll(filepath.Join(views, ".trash-1-y", "store"), 0o755))
	alive := t.TempDir()
	v, err := Acquire(ctx, root, closure, User{Name: "a", Alive: alive})
	if err != nil || !v.Built {
		t.Fatalf("%+v %v", v, err)
	}
	if left, _ := filepath.Glob(filepath.Join(views, ".build-*")); len(left) != 0 {
		t.Errorf("crashed build left: %v", left)
	}
	res, err := Prune(ctx, root, PruneOptions{})
	if err != nil || len(res.Removed) != 0 {
		t.Fatalf("prune of a used view: %+v, %v", res, err)
	}
	if left, _ := filepath.Glob(filepath.Join(views, ".trash-*")); len(left) != 0 {
		t.Errorf("trash left: %v", left)
	}

	// Unused but current: kept by a plain prune, removed with Unused.
	must(t, Release(root, key, "a"))
	if res, err := Prune(ctx, root, PruneOptions{}); err != nil || len(res.Removed) != 0 {
		t.Fatalf("prune removed a current view: %+v, %v", res, err)
	}
	if res, err := Prune(ctx, root, PruneOptions{Unused: true, MinIdle: time.Hour}); err != nil || len(res.Removed) != 0 {
		t.Fatalf("prune removed a view idle less than MinIdle: %+v, %v", res, err)
	}
	if res, err := Prune(ctx, root, PruneOptions{Unused: true, DryRun: true}); err != nil || len(res.Removed) != 1 {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	if res, err := Prune(ctx, root, PruneOptions{Unused: true}); err != nil || len(res.Removed) != 1 {
		t.Fatalf("prune Unused: %+v, %v", res, err)
	}
	if left, _ := os.ReadDir(views); len(left) != 0 {
		t.Errorf("left in views: %v", left)
	}

	// The garbage collector deletes a path of an unused view: the view
	// holds the only link to its files until pruned.
	if _, err := Acquire(ctx, root, closure, User{Name: "b", Alive: alive}); err != nil {
		t.Fatal(err)
	}
	must(t, Release(root, key, "b"))
	_, err = removeTree(filepath.Join(host, closure[0].Base()))
	must(t, err)
	res, err = Prune(ctx, root, PruneOptions{})
	if err != nil || len(res.Removed) != 1 || res.BytesFreed < 64<<10 {
		t.Fatalf("prune after the store path went: %+v, %v", res, err)
	}

	// A path deleted and substituted again (new inode) while a container
	// uses the old view: the old view is retired, not touched, and a new
	// one built; the retired one goes when its user is gone.
	closure = fakeStore(t, root)
	if _, err := Acquire(ctx, root, closure, User{Name: "c", Alive: alive}); err != nil {
		t.Fatal(err)
	}
	_, err = removeTree(filepath.Join(host, closure[1].Base()))
	must(t, err)
	closure = fakeStore(t, root)
	deadUser := filepath.Join(t.TempDir(), "bundle")
	must(t, os.Mkdir(deadUser, 0o755))
	v, err = Acquire(ctx, root, closure, User{Name: "d", Alive: deadUser})
	if err != nil || !v.Built {
		t.Fatalf("acquire after the store changed: %+v, %v", v, err)
	}
	old, _ := filepath.Glob(filepath.Join(views, ".old-"+key+"-*"))
	if len(old) != 1 {
		t.Fatalf("retired views: %v", old)
	}
	if stat(t, filepath.Join(v.StoreDir, closure[1].Base())).Ino != stat(t, filepath.Join(host, closure[1].Base())).Ino {
		t.Error("the new view does not link the new store file")
	}
	must(t, Release(root, key, "c"))
	must(t, os.Remove(deadUser)) // "d" died without releasing
	res, err = Prune(ctx, root, PruneOptions{Unused: true})
	if err != nil || len(res.Removed) != 2 {
		t.Fatalf("prune: %+v, %v", res, err)
	}
	if left, _ := os.ReadDir(views); len(left) != 0 {
		t.Errorf("left in views: %v", left)
	}
}

// syntheticStore makes n store paths of perPath files each, spread over
// dirs directories per path, under root/nix/store.
func syntheticStore(b *testing.B, root string, n, dirs, perPath int) []storepath.Path {
	b.Helper()
	var closure []storepath.Path
	for i := range n {
		p := storepath.Path(fmt.Sprintf("%032d-bench-%d", i, i))
		base := filepath.Join(root, "nix", "store", p.Base())
		for d := range dirs {
			if err := os.MkdirAll(filepath.Join(base, fmt.Sprintf("d%d", d)), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		for f := range perPath {
			name := filepath.Join(base, fmt.Sprintf("d%d", f%dirs), fmt.Sprintf("f%d", f))
			if err := os.WriteFile(name, []byte(name), 0o444); err != nil {
				b.Fatal(err)
			}
		}
		closure = append(closure, p)
	}
	return closure
}

// shapedStore makes the issue-15 closure under root/nix/store: 50 paths,
// one of 80,000 files in 80 directories (a toolchain), 49 of 408 files in
// 8 directories each; 99,992 files in all.
func shapedStore(b *testing.B, root string) []storepath.Path {
	b.Helper()
	big := syntheticStore(b, root, 1, 80, 80000)
	var small []storepath.Path
	for i := range 49 {
		p := storepath.Path(fmt.Sprintf("%032d-small-%d", i+1, i))
		base := filepath.Join(root, "nix", "store", p.Base())
		for f := range 408 {
			d := filepath.Join(base, fmt.Sprintf("d%d", f%8))
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", f)), []byte(d), 0o444); err != nil {
				b.Fatal(err)
			}
		}
		small = append(small, p)
	}
	return append(big, small...)
}

// BenchmarkBuild: the first container of a closure (or the prefetch)
// builds its view. Shapes: the synthetic closures of BenchmarkStart (one
// bin directory and one file per path), and paths of 100 files in 10
// directories, closer to real packages.
func BenchmarkBuild(b *testing.B) {
	for _, c := range []struct{ n, dirs, files int }{
		{10, 1, 1}, {100, 1, 1}, {1000, 1, 1}, {3000, 1, 1}, {100, 10, 100}, {1000, 10, 100},
	} {
		b.Run(fmt.Sprintf("paths-%d-files-%d", c.n, c.n*c.files), func(b *testing.B) {
			root := b.TempDir()
			closure := syntheticStore(b, root, c.n, c.dirs, c.files)
			ctx := context.Background()
			b.ResetTimer()
			buildBench(b, ctx, root, closure)
		})
	}
	b.Run("paths-50-files-100000", func(b *testing.B) {
		root := b.TempDir()
		closure := shapedStore(b, root)
		b.ResetTimer()
		buildBench(b, context.Background(), root, closure)
	})
}

func buildBench(b *testing.B, ctx context.Context, root string, closure []storepath.Path) {
	for range b.N {
		v, err := Ensure(ctx, root, closure)
		if err != nil || !v.Built {
			b.Fatal(v, err)
		}
		b.StopTimer()
		if _, err := Prune(ctx, root, PruneOptions{Unused: true}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkAcquire: a container on a closure whose view exists
// checks the view against the store and registers itself.
func BenchmarkAcquire(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 3000} {
		b.Run(fmt.Sprintf("paths-%d", n), func(b *testing.B) {
			root := b.TempDir()
			closure := syntheticStore(b, root, n, 1, 1)
			ctx := context.Background()
			alive := b.TempDir()
			if _, err := Ensure(ctx, root, closure); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				v, err := Acquire(ctx, root, closure, User{Name: fmt.Sprint(i), Alive: alive})
				if err != nil || v.Built {
					b.Fatal(v, err)
				}
			}
		})
	}
}

// TestStoreViewUnsupported: where the views directory cannot hard-link
// into the store (here the store is a mount of its own, as on NixOS),
// Acquire says so and leaves nothing behind; the shim then mounts
// each path (Build).
func TestStoreViewUnsupported(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root (bind mount) in CI")
		}
		t.Skip("needs root to bind-mount the store")
	}
	root := t.TempDir()
	closure := fakeStore(t, root)
	store := filepath.Join(root, "nix", "store")
	must(t, unix.Mount(store, store, "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(store, unix.MNT_DETACH) })
	_, err := Acquire(context.Background(), root, closure, User{Name: "a", Alive: root})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Acquire across mounts: %v, want ErrUnsupported", err)
	}
	if left, _ := os.ReadDir(filepath.Join(root, Dir)); len(left) > 1 { // the lock file
		t.Errorf("left in views: %v", left)
	}
}
