package mount

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

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
	hostsFile := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hostsFile, nil, 0o644)

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	criMounts := []specs.Mount{
		{Destination: "/etc/hosts", Type: "bind", Source: hostsFile, Options: []string{"rbind", "rw"}},
		{Destination: "/data/volume", Type: "bind", Source: t.TempDir(), Options: []string{"rbind"}},
		{Destination: "/proc", Type: "proc", Source: "proc"},
	}
	mounts, err := Build(rootfs, host, []storepath.Path{dirPath, filePath, linkPath}, criMounts)
	if err != nil {
		t.Fatal(err)
	}
	// The read-only store directory, then one bind per non-symlink path.
	if len(mounts) != 3 || mounts[0].Destination != "/nix/store" || mounts[1].Destination != dirPath.Absolute() ||
		mounts[2].Source != filepath.Join(host, filePath.Base()) {
		t.Fatalf("mounts: %+v", mounts)
	}
	for _, m := range mounts {
		if !hasOption(m.Options, "ro") || !hasOption(m.Options, "nosuid") || !hasOption(m.Options, "nodev") {
			t.Errorf("%s: options %v", m.Destination, m.Options)
		}
	}
	checks := map[string]func(os.FileInfo) bool{
		"nix/store/" + dirPath.Base():  os.FileInfo.IsDir,
		"nix/store/" + filePath.Base(): func(fi os.FileInfo) bool { return fi.Mode().IsRegular() },
		"nix/store/" + linkPath.Base(): func(fi os.FileInfo) bool { return fi.Mode()&os.ModeSymlink != 0 },
		"etc/hosts":                    func(fi os.FileInfo) bool { return fi.Mode().IsRegular() },
		"data/volume":                  os.FileInfo.IsDir,
		"tmp":                          func(fi os.FileInfo) bool { return fi.Mode()&os.ModeSticky != 0 },
		"etc/passwd":                   func(fi os.FileInfo) bool { return fi.Size() > 0 },
	}
	for p, ok := range checks {
		fi, err := os.Lstat(filepath.Join(rootfs, p))
		if err != nil || !ok(fi) {
			t.Errorf("%s: %v %v", p, fi, err)
		}
	}
	if got := PathEnv(host, []storepath.Path{dirPath, filePath}); got != dirPath.Absolute()+"/bin" {
		t.Errorf("PathEnv = %q", got)
	}
	if _, err := Build(filepath.Join(t.TempDir(), "r"), host, []storepath.Path{"0000000000000000000000000000000a-missing"}, nil); err == nil {
		t.Error("a closure path missing from the store was accepted")
	}
}

// TestBuildShared: a store view is one read-only, nosuid, nodev bind at
// /nix/store, whatever the closure's size.
func TestBuildShared(t *testing.T) {
	vs := t.TempDir()
	mounts, err := BuildShared(filepath.Join(t.TempDir(), "rootfs"), vs, nil)
	if err != nil || len(mounts) != 1 || mounts[0].Destination != "/nix/store" || mounts[0].Source != vs ||
		!hasOption(mounts[0].Options, "ro") || !hasOption(mounts[0].Options, "nosuid") || !hasOption(mounts[0].Options, "nodev") {
		t.Errorf("BuildShared: %+v, %v", mounts, err)
	}
}
