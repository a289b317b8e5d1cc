package shim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/mount"
)

// overlayRootfs lays out an image layer (files: path -> content, a
// trailing / for a directory) and returns the rootfs mounts containerd's
// overlayfs snapshotter passes for a container on it, and its upper
// directory (the container's writable layer).
func overlayRootfs(t *testing.T, files map[string]string) ([]*types.Mount, string) {
	dir := t.TempDir()
	lower, upper, work := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{lower, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, content := range files {
		full := filepath.Join(lower, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if strings.HasSuffix(p, "/") {
			err = os.Mkdir(full, 0o755)
		} else {
			err = os.WriteFile(full, []byte(content), 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return []*types.Mount{{
		Type: "overlay", Source: "overlay",
		Options: []string{"index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + lower},
	}}, upper
}

// assertUnmounted: nothing is mounted at or under the bundle's rootfs,
// which is left an empty directory (runc's task service mounts there next).
func assertUnmounted(t *testing.T, bundle string) {
	t.Helper()
	rootfs := filepath.Join(bundle, "rootfs")
	if ms, err := mount.MountsUnder(bundle); err != nil || len(ms) > 0 {
		t.Errorf("mounts left under the bundle: %v, %v", ms, err)
		for _, m := range ms {
			_ = os.Remove(m) // fails on a mount point: keeps the temp dir's removal from deleting through it
		}
		unmountRootfs(rootfs)
	}
	if entries, err := os.ReadDir(rootfs); err != nil || len(entries) > 0 {
		t.Errorf("the bundle's rootfs after buildSkeleton: %v, %v; want an empty directory", entries, err)
	}
}

// TestBuildSkeleton: the skeleton is built into the container's snapshot
// (a real overlay mount, as the overlayfs snapshotter makes): it lands in
// the writable layer, the image's files stay, and the rootfs is
// unmounted again.
func TestBuildSkeleton(t *testing.T) {
	testenv.Root(t, "mount overlayfs")
	rootfs, upper := overlayRootfs(t, map[string]string{"pause": "binary", "tmp/": ""})
	bundle := t.TempDir()
	if err := buildSkeleton(context.Background(), bundle, "pause", rootfs); err != nil {
		t.Fatal(err)
	}
	assertUnmounted(t, bundle)
	for p, want := range map[string]os.FileMode{"tmp": 0o777 | os.ModeSticky, "var/tmp": 0o777 | os.ModeSticky, "nix/store": 0o755} {
		fi, err := os.Stat(filepath.Join(upper, p))
		if err != nil || !fi.IsDir() || fi.Mode()&(os.ModePerm|os.ModeSticky) != want {
			t.Errorf("/%s in the writable layer: %v, %v; want a directory of mode %v", p, fi, err, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(upper, "etc/passwd")); err != nil || !strings.Contains(string(b), "nobody") {
		t.Errorf("/etc/passwd in the writable layer: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(upper, "pause")); err == nil {
		t.Errorf("the image's /pause was copied up")
	}
}

// TestBuildSkeletonFailures: whatever fails (the snapshot's mount, the
// skeleton in an image that cannot hold it), the create fails naming the
// cause and nothing stays mounted; without rootfs mounts it is refused.
func TestBuildSkeletonFailures(t *testing.T) {
	testenv.Root(t, "mount overlayfs")
	ctx := context.Background()

	// An image where the skeleton's /run is a file.
	rootfs, _ := overlayRootfs(t, map[string]string{"run": "a file"})
	bundle := t.TempDir()
	err := buildSkeleton(ctx, bundle, "image-a", rootfs)
	if err == nil || !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "skeleton directory /run") || !strings.Contains(err.Error(), "image-a") {
		t.Errorf("an image with a file at /run: %v; want FailedPrecondition naming /run and the image", err)
	}
	t.Logf("image with a file at /run: %v", err)
	assertUnmounted(t, bundle)

	// A snapshot that does not mount (its lower directory gone).
	rootfs, _ = overlayRootfs(t, nil)
	rootfs[0].Options[len(rootfs[0].Options)-1] = "lowerdir=" + filepath.Join(t.TempDir(), "gone")
	bundle = t.TempDir()
	if err := buildSkeleton(ctx, bundle, "image-a", rootfs); err == nil || !strings.Contains(err.Error(), "mounting the container's rootfs") {
		t.Errorf("a rootfs that does not mount: %v", err)
	}
	assertUnmounted(t, bundle)

	// Two mounts, the second failing after the first is mounted.
	good, _ := overlayRootfs(t, nil)
	bad := &types.Mount{Type: "bind", Source: filepath.Join(t.TempDir(), "gone"), Target: "mnt", Options: []string{"rbind"}}
	bundle = t.TempDir()
	if err := buildSkeleton(ctx, bundle, "image-c", []*types.Mount{good[0], bad}); err == nil {
		t.Error("a rootfs whose second mount fails was accepted")
	}
	assertUnmounted(t, bundle)

	if err := buildSkeleton(ctx, t.TempDir(), "image-d", nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("no rootfs mounts: %v; want FailedPrecondition", err)
	}
}
