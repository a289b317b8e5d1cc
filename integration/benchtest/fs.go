package benchtest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/mount"
)

func exists(dir, urlPath string) bool {
	_, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(urlPath, "/"))))
	return err == nil
}

// Usage is what a directory tree holds.
type Usage struct {
	Files int   // regular files, each hard link counted once
	Bytes int64 // their apparent size (st_size)
	Disk  int64 // the blocks they and the directories/symlinks occupy (st_blocks*512)
}

// TreeUsage walks dir (not following symlinks, not entering mount points
// below it: a storepkg view binds store paths, an overlay shows layers)
// and sums its regular files, counting a file with several hard links
// once. A missing dir is empty.
func TreeUsage(dir string) (Usage, error) {
	var u Usage
	seen := map[[2]uint64]bool{}
	dir = filepath.Clean(dir)
	mounts, err := mount.MountsUnder(dir)
	if err != nil {
		return u, err
	}
	skip := map[string]bool{}
	for _, m := range mounts {
		if m != dir {
			skip[m] = true
		}
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if skip[p] {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", p)
		}
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if seen[key] {
			return nil
		}
		seen[key] = true
		u.Disk += st.Blocks * 512
		if fi.Mode().IsRegular() {
			u.Files++
			u.Bytes += fi.Size()
		}
		return nil
	})
	return u, err
}

// LogWatch waits for lines in the files of one directory (a pod's log
// directory) with inotify, so a benchmark learns when a container's first
// output lands without polling.
type LogWatch struct {
	dir string
	fd  int
}

// WatchDir starts watching dir, which must exist, for created and written
// files.
func WatchDir(dir string) (*LogWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MODIFY|unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	return &LogWatch{dir: dir, fd: fd}, nil
}

// Close stops watching.
func (w *LogWatch) Close() error { return unix.Close(w.fd) }

// Wait returns the time at which the file name (in the watched directory)
// first contained want: checked now and after every change to the
// directory, until timeout.
func (w *LogWatch) Wait(name, want string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	path := filepath.Join(w.dir, name)
	buf := make([]byte, 64<<10)
	for {
		if data, err := os.ReadFile(path); err == nil && bytes.Contains(data, []byte(want)) {
			return time.Now(), nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			data, _ := os.ReadFile(path)
			return time.Time{}, fmt.Errorf("%s has no %q after %v (it holds %q)", path, want, timeout, data)
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
			return time.Time{}, fmt.Errorf("poll inotify: %w", err)
		}
		// Drain the events; the file is read again above.
		for {
			if _, err := unix.Read(w.fd, buf); err != nil {
				break
			}
		}
	}
}
