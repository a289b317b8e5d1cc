package mount

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/pkg/storepath"
)

func TestBuild(t *testing.T) {
	host := t.TempDir()
	dirPath := storepath.Path("s66mzxpvicwk07gjbjfw9izjfa797vsw-hello")
	filePath := storepath.Path("p8nr66a4is8k7z2b977r95b55s3d2d5k-hello.sh")
	linkPath := storepath.Path("ap5lw0pk87zllpr8psdiqgxx50yqpp1h-alias")
	os.MkdirAll(filepath.Join(host, dirPath.Base(), "bin"), 0o755)
	os.WriteFile(filepath.Join(host, filePath.Base()), []byte("#!/bin/sh\n"), 0o555)
	os.Symlink(dirPath.Absolute(), filepath.Join(host, linkPath.Base()))

	storeDir := filepath.Join(t.TempDir(), "store")
	mounts, err := Build(storeDir, host, []storepath.Path{dirPath, filePath, linkPath})
	if err != nil {
		t.Fatal(err)
	}
	// The read-only store directory, then one bind per non-symlink path.
	if len(mounts) != 3 || mounts[0].Destination != "/nix/store" || mounts[0].Source != storeDir ||
		mounts[1].Destination != dirPath.Absolute() || mounts[2].Source != filepath.Join(host, filePath.Base()) {
		t.Fatalf("mounts: %+v", mounts)
	}
	for _, m := range mounts {
		if !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "nosuid") || !slices.Contains(m.Options, "nodev") {
			t.Errorf("%s: options %v", m.Destination, m.Options)
		}
	}
	checks := map[string]func(os.FileInfo) bool{
		dirPath.Base():  os.FileInfo.IsDir,
		filePath.Base(): func(fi os.FileInfo) bool { return fi.Mode().IsRegular() },
		linkPath.Base(): func(fi os.FileInfo) bool { return fi.Mode()&os.ModeSymlink != 0 },
	}
	for p, ok := range checks {
		fi, err := os.Lstat(filepath.Join(storeDir, p))
		if err != nil || !ok(fi) {
			t.Errorf("%s: %v %v", p, fi, err)
		}
	}
	if got := PathEnv(host, []storepath.Path{dirPath, filePath}); got != dirPath.Absolute()+"/bin" {
		t.Errorf("PathEnv = %q", got)
	}
	if _, err := Build(filepath.Join(t.TempDir(), "r"), host, []storepath.Path{"0000000000000000000000000000000a-missing"}); err == nil {
		t.Error("a closure path missing from the store was accepted")
	}
}

// TestBuildShared: a store view is one read-only, nosuid, nodev bind at
// /nix/store, whatever the closure's size.
func TestBuildShared(t *testing.T) {
	vs := t.TempDir()
	mounts := BuildShared(vs)
	if len(mounts) != 1 || mounts[0].Destination != "/nix/store" || mounts[0].Source != vs ||
		!slices.Contains(mounts[0].Options, "ro") || !slices.Contains(mounts[0].Options, "nosuid") || !slices.Contains(mounts[0].Options, "nodev") {
		t.Errorf("BuildShared: %+v", mounts)
	}
}

// TestSkeleton: the skeleton is built into an image's root: missing
// directories made, /tmp and /var/tmp given 1777 whatever the image had,
// the identity files replaced, the image's other files kept.
func TestSkeleton(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "pause"), []byte("binary"), 0o755)
	os.Mkdir(filepath.Join(root, "tmp"), 0o755)
	os.Mkdir(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("app:x:1000:1000::/:/bin/sh\n"), 0o600)
	os.Symlink("passwd", filepath.Join(root, "etc", "group"))
	if err := Skeleton(root); err != nil {
		t.Fatal(err)
	}
	for _, d := range skeletonDirs {
		fi, err := os.Lstat(filepath.Join(root, d.path))
		if err != nil || !fi.IsDir() || fi.Mode()&(os.ModePerm|os.ModeSticky) != d.mode {
			t.Errorf("/%s: %v, %v; want a directory of mode %v", d.path, fi, err, d.mode)
		}
	}
	for name, want := range skeletonFiles {
		fi, err := os.Lstat(filepath.Join(root, name))
		b, _ := os.ReadFile(filepath.Join(root, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 || string(b) != want {
			t.Errorf("/%s: %v, %v, %q", name, fi, err, b)
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "pause")); err != nil || string(b) != "binary" {
		t.Errorf("the image's /pause: %q, %v", b, err)
	}
	// Again on the same root (a retried create): the same result.
	if err := Skeleton(root); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "etc")); len(entries) != 2 {
		t.Errorf("/etc after two builds: %v", entries)
	}
}

// TestSkeletonLinksStayInside: an image whose skeleton paths are
// symbolic links out of its root (absolute, or up with ..) never leads
// the skeleton's writes outside it; an image where a skeleton directory
// is a file fails, naming the path.
func TestSkeletonLinksStayInside(t *testing.T) {
	for _, link := range []struct{ name, target string }{
		{"etc", "/OUTSIDE"},                     // absolute
		{"tmp", "../../../../../OUTSIDE/tmp"},   // up and out
		{"var/tmp", "/OUTSIDE/missing"},         // dangling
		{"nix", "../../../../../OUTSIDE/store"}, // dangling, up and out
	} {
		outside := t.TempDir()
		os.Mkdir(filepath.Join(outside, "tmp"), 0o755)
		os.WriteFile(filepath.Join(outside, "passwd"), []byte("host\n"), 0o644)
		root := t.TempDir()
		os.Mkdir(filepath.Join(root, "var"), 0o755)
		target := strings.ReplaceAll(link.target, "/OUTSIDE", outside)
		if err := os.Symlink(target, filepath.Join(root, link.name)); err != nil {
			t.Fatal(err)
		}
		err := Skeleton(root)
		t.Logf("/%s -> %s: %v", link.name, target, err)
		if fi, err := os.Stat(filepath.Join(outside, "tmp")); err != nil || fi.Mode()&(os.ModePerm|os.ModeSticky) != 0o755 {
			t.Errorf("/%s -> %s: the host directory it points to: %v, %v", link.name, target, fi, err)
		}
		if b, err := os.ReadFile(filepath.Join(outside, "passwd")); err != nil || string(b) != "host\n" {
			t.Errorf("/%s -> %s: the host file it points to: %q, %v", link.name, target, b, err)
		}
		if entries, _ := os.ReadDir(outside); len(entries) != 2 {
			t.Errorf("/%s -> %s: files made outside the image's root: %v", link.name, target, entries)
		}
	}

	// A file where the skeleton has a directory.
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "run"), nil, 0o644)
	if err := Skeleton(root); err == nil || !strings.Contains(err.Error(), "/run in "+root) {
		t.Errorf("an image with a file at /run: %v; want an error naming /run", err)
	}
}
