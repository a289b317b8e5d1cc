package views

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/storepkg/storepkg/internal/powercut"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// checkView fails the test unless the view at viewStore holds every entry
// of the closure's trees, each non-directory the store's own inode.
func checkView(t *testing.T, root, viewStore string, closure []storepath.Path) {
	t.Helper()
	host := filepath.Join(root, "nix", "store")
	for _, p := range closure {
		filepath.Walk(filepath.Join(host, p.Base()), func(hp string, fi os.FileInfo, err error) error {
			must(t, err)
			rel, _ := filepath.Rel(host, hp)
			if _, err := os.Lstat(filepath.Join(viewStore, rel)); err != nil {
				t.Errorf("view lacks %s: %v", rel, err)
				return nil
			}
			if !fi.IsDir() && stat(t, hp).Ino != stat(t, filepath.Join(viewStore, rel)).Ino {
				t.Errorf("view's %s is not the store's inode", rel)
			}
			return nil
		})
	}
}

// TestStoreViewPowerCut: power is cut after a view was built and ext4
// committed its journal (every 5 s by default, or when anyone fsyncs
// anything, as here) but before it wrote the view's manifest (data,
// written back within ~30 s). On the disk that survives, the next acquire
// finds the view incomplete and rebuilds it whole.
func TestStoreViewPowerCut(t *testing.T) {
	ctx := context.Background()
	disk := powercut.New(t, 32<<20)
	closure := fakeStore(t, disk.Dir)
	disk.Sync(t) // the store is old; the view is what is new
	if _, err := Ensure(ctx, disk.Dir, closure); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(disk.Dir, "other"))
	must(t, err)
	must(t, f.Sync())
	f.Close()
	after := disk.Cut(t)

	if _, err := os.Stat(filepath.Join(after, Dir, Key(closure))); err != nil {
		t.Fatalf("the view did not survive the power cut (%v): the test needs it to", err)
	}
	v, err := Acquire(ctx, after, closure, User{Name: "a", Alive: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Built {
		t.Errorf("the view that survived the power cut was used as it was, not rebuilt")
	}
	checkView(t, after, v.StoreDir, closure)
}

// TestStoreViewNewBoot: a view built in an earlier boot is rebuilt, not
// used: a power cut may have lost some of its links while its manifest
// survived (filesystems that do not keep metadata operations in order can
// do that; ext4 cannot be made to here). The lost link is made by hand,
// the reboot by changing the boot ID.
func TestStoreViewNewBoot(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	closure := fakeStore(t, root)
	v, err := Ensure(ctx, root, closure)
	if err != nil || !v.Built {
		t.Fatalf("%+v %v", v, err)
	}
	lost := filepath.Join(v.StoreDir, closure[0].Base(), "bin")
	must(t, os.Chmod(filepath.Dir(lost), 0o755))
	_, err = removeTree(lost)
	must(t, err)
	must(t, os.Chmod(filepath.Dir(lost), 0o555))

	if v, err := Ensure(ctx, root, closure); err != nil || v.Built {
		t.Fatalf("same boot: %+v, %v; want the view used as it is", v, err)
	}
	prev := bootID
	t.Cleanup(func() { bootID = prev })
	bootID = func() string { return "next-boot" }
	v, err = Acquire(ctx, root, closure, User{Name: "a", Alive: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Built {
		t.Errorf("a view of an earlier boot was used, not rebuilt")
	}
	checkView(t, root, v.StoreDir, closure)
}
