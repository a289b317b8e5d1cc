// Package tmpfstest mounts small tmpfs filesystems for tests that need a
// filesystem they can fill (disk pressure) without touching the machine's.
package tmpfstest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/procid"
)

const prefix = "storepkg-tmpfs-"

// Require skips the test unless it runs as root; in CI (CI set) it fails.
func Require(t testing.TB) {
	t.Helper()
	testenv.Root(t, "mount a tmpfs")
}

// Mount mounts a tmpfs of size bytes on a new directory under the temp
// dir and unmounts it at cleanup. Mounts left by a test process that died
// (a timeout panics past cleanups) are removed first.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	Require(t)
	sweep(t)
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+strconv.FormatInt(size, 10)+",mode=0755"); err != nil {
		os.Remove(dir)
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	// The owner, beside the mount point (not in the filesystem, which the
	// test fills).
	owner, _ := json.Marshal(procid.Self())
	if err := os.WriteFile(dir+".owner", owner, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir + ".owner") })
	return dir
}

// sweep unmounts tmpfs mounts of this package whose owner is dead.
func sweep(t testing.TB) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(filepath.Base(f[4]), prefix) || filepath.Dir(f[4]) != filepath.Clean(os.TempDir()) {
			continue
		}
		dir := f[4]
		var w procid.ID
		if b, err := os.ReadFile(dir + ".owner"); err == nil && json.Unmarshal(b, &w) == nil {
			if alive, known := w.Alive(); alive || !known {
				continue
			}
		} else if err == nil {
			continue
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH); err == nil {
			t.Logf("tmpfstest: removed %s, left by a test that died", dir)
			os.Remove(dir)
			os.Remove(dir + ".owner")
		}
	}
}
