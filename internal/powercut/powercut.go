// Package powercut gives tests an ext4 filesystem on a loop device whose
// state at a power cut they can look at: Cut copies the loop device's
// backing file while the filesystem is still mounted. The copy holds what
// the device holds at that instant, which is exactly what survives a
// power loss; the filesystem's dirty page cache (delayed allocation
// keeps file data there for about 30 s) is not in it. Mounting the copy
// replays ext4's journal as the first mount after a crash does.
//
// A copy is crash-consistent as long as the filesystem writes nothing to
// the device while it is made (a few milliseconds for a small disk): a
// journal commit just then could leave a torn image, as no real power cut
// would. The filesystem is mounted with a long commit interval so that
// only the syncs under test write the journal.
package powercut

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/procid"
)

const prefix = "storepkg-powercut-"

// mountOptions: the defaults (data=ordered, delalloc), but no periodic
// journal commit during a test (see the package comment).
const mountOptions = "commit=600"

// Disk is an ext4 filesystem on a loop device, mounted at Dir.
type Disk struct {
	Dir  string // the mount point
	dev  string
	file string // the backing file
	tmp  string // the directory holding the images, the mount points and the owner record
}

// Require makes the test unavailable unless it runs as root with
// losetup and mkfs.ext4.
func Require(t testing.TB) {
	t.Helper()
	testenv.Root(t, "attach loop devices and mount ext4")
	testenv.LookPath(t, "losetup", "mkfs.ext4")
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testenv.Unavailable(t, "no loop devices: %v", err)
	}
}

// New makes an ext4 filesystem of size bytes, attaches it to a loop device
// and mounts it; all of it is undone at cleanup (also when the test fails).
func New(t testing.TB, size int64) *Disk {
	t.Helper()
	Require(t)
	sweep(t)
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	owner, _ := json.Marshal(procid.Self())
	if err := os.WriteFile(filepath.Join(tmp, "owner"), owner, 0o600); err != nil {
		t.Fatal(err)
	}
	d := &Disk{tmp: tmp, file: filepath.Join(tmp, "disk.img")}
	if err := os.WriteFile(d.file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.file, size); err != nil {
		t.Fatal(err)
	}
	// Inode tables and journal initialised now, not by a background
	// thread writing while a test copies the image.
	run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", d.file)
	d.dev, d.Dir = attachAndMount(t, d.file, filepath.Join(tmp, "mnt"))
	return d
}

// Sync makes everything written to the filesystem so far durable, as
// setup that a test's power cut should not undo.
func (d *Disk) Sync(t testing.TB) {
	t.Helper()
	fd, err := unix.Open(d.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatalf("syncfs %s: %v", d.Dir, err)
	}
}

// Cut copies the device as it is now, as a power cut would leave it, and
// mounts the copy (replaying the journal); it returns the copy's mount
// point. The original stays mounted and usable. Each Cut is a new copy.
func (d *Disk) Cut(t testing.TB) string {
	t.Helper()
	cut, err := os.CreateTemp(d.tmp, "cut-*.img")
	if err != nil {
		t.Fatal(err)
	}
	// The loop device writes through the backing file's page cache, so
	// reading the file gives what the device holds. Reading /dev/loopN
	// would not: the filesystem's own metadata buffers live in the block
	// device's cache, dirty ones included.
	src, err := os.Open(d.file)
	if err != nil {
		cut.Close()
		t.Fatal(err)
	}
	_, err = io.Copy(cut, src)
	src.Close()
	if cerr := cut.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("copying %s: %v", d.file, err)
	}
	_, dir := attachAndMount(t, cut.Name(), strings.TrimSuffix(cut.Name(), ".img")+".mnt")
	return dir
}

// attachAndMount attaches file to a free loop device and mounts it at dir;
// cleanup unmounts and detaches it.
func attachAndMount(t testing.TB, file, dir string) (dev, mnt string) {
	t.Helper()
	dev = strings.TrimSpace(run(t, "losetup", "--find", "--show", file))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, dir, "ext4", 0, mountOptions); err != nil {
		t.Fatalf("mount %s (%s) on %s: %v", dev, file, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dev, dir
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

// sweep unmounts and detaches what a test process that died (a timeout
// panics past cleanups) left: loop devices backed by a file of this
// package whose owner is gone, and their mounts.
func sweep(t testing.TB) {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var mountinfo []string
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		mountinfo = strings.Split(string(b), "\n")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		tmp := filepath.Dir(backing)
		if !strings.HasPrefix(filepath.Base(tmp), prefix) || filepath.Dir(tmp) != filepath.Clean(os.TempDir()) {
			continue
		}
		var w procid.ID
		if b, err := os.ReadFile(filepath.Join(tmp, "owner")); err == nil && json.Unmarshal(b, &w) == nil {
			if alive, known := w.Alive(); alive || !known {
				continue
			}
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		majmin := devNumber(filepath.Dir(filepath.Dir(f)))
		for _, line := range mountinfo {
			fields := strings.Fields(line)
			if len(fields) > 4 && fields[2] == majmin {
				unix.Unmount(fields[4], unix.MNT_DETACH)
			}
		}
		if err := exec.Command("losetup", "-d", dev).Run(); err == nil {
			t.Logf("powercut: removed %s (%s), left by a test that died", dev, backing)
		}
		os.RemoveAll(tmp)
	}
}

// devNumber reads "major:minor" of a block device from sysfs.
func devNumber(sysDir string) string {
	b, err := os.ReadFile(filepath.Join(sysDir, "dev"))
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if maj, min, ok := strings.Cut(s, ":"); ok {
		if _, err := strconv.Atoi(maj); err == nil {
			if _, err := strconv.Atoi(min); err == nil {
				return s
			}
		}
	}
	return ""
}

// String describes the disk for messages.
func (d *Disk) String() string { return fmt.Sprintf("%s on %s (%s)", d.Dir, d.dev, d.file) }
