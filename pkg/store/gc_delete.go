package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// freedBy is what Nix's deletePath counts for a file it removes: its
// size if it has one or two links (two: probably shared only with
// .links, which the collector cleans up afterwards), nothing for
// directories or files with more links.
func freedBy(st *unix.Stat_t) uint64 {
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return 0
	}
	if st.Nlink == 1 || st.Nlink == 2 {
		return uint64(st.Size)
	}
	return 0
}

// deletePath removes path and everything below it as Nix's deletePath
// does: directories are first made accessible (u+rwx), symbolic links
// are removed and never followed, a missing path is not an error. It
// returns the bytes freed, counted as freedBy does.
func deletePath(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	freed := freedBy(&st)
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if st.Mode&0o700 != 0o700 {
			if err := unix.Chmod(path, uint32(st.Mode&0o7777|0o700)); err != nil {
				return freed, &fs.PathError{Op: "chmod", Path: path, Err: err}
			}
		}
		names, err := readDirNames(path)
		if err != nil {
			return freed, err
		}
		for _, name := range names {
			n, err := deletePath(filepath.Join(path, name))
			freed += n
			if err != nil {
				return freed, err
			}
		}
		if err := unix.Rmdir(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return freed, &fs.PathError{Op: "rmdir", Path: path, Err: err}
		}
		return freed, nil
	}
	if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return freed, &fs.PathError{Op: "unlink", Path: path, Err: err}
	}
	return freed, nil
}

// diskUsage is what deletePath would free, without deleting anything.
func diskUsage(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	n := freedBy(&st)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return n, nil
	}
	names, err := readDirNames(path)
	if err != nil {
		return n, err
	}
	for _, name := range names {
		m, err := diskUsage(filepath.Join(path, name))
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("reading directory %s: %w", dir, err)
	}
	return names, nil
}

// deleteLockFile removes a store path's lock file if nobody holds it:
// like Nix's deleteLockFile, it takes the lock, unlinks the file and
// writes a byte into it, so that a process that opened the file before
// the unlink and locks it after us sees it is stale and starts again
// (LockPath does). held=true means someone holds the lock; the file is
// left alone. (Nix 2.8's collector relies on temporary roots alone;
// holders of our locks have a temporary root too, so this only matters
// for lock holders that do not.) Anything but a regular file is
// deleted with deletePath.
func deleteLockFile(path string) (freed uint64, held bool, err error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if !fi.Mode().IsRegular() {
		freed, err := deletePath(path)
		return freed, false, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	ok, err := flockTry(f, lockExclusive)
	if err != nil {
		return 0, false, err
	}
	if !ok {
		return 0, true, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, false, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Nlink == 0 {
		return 0, false, nil // someone else removed it meanwhile
	}
	freed = freedBy(&st)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false, err
	}
	if _, err := f.Write([]byte("d")); err != nil {
		return freed, false, fmt.Errorf("marking deleted lock file %s: %w", path, err)
	}
	return freed, false, nil
}

// removeUnusedLinks removes the files of /nix/store/.links that no store
// file shares any more (link count 1), as Nix's collector does after
// deleting. Their bytes were counted when the last store file using them
// was deleted.
func removeUnusedLinks(dir string) (int, error) {
	names, err := readDirNames(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: gc: %w", err)
	}
	n := 0
	for _, name := range names {
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return n, fmt.Errorf("store: gc: %w", &fs.PathError{Op: "lstat", Path: p, Err: err})
		}
		if st.Nlink != 1 {
			continue
		}
		if err := unix.Unlink(p); err != nil && !errors.Is(err, unix.ENOENT) {
			return n, fmt.Errorf("store: gc: deleting unused link %s: %w", p, err)
		}
		n++
	}
	return n, nil
}
