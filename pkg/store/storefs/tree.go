package storefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Counter says how many bytes removing a file frees, from its lstat(2)
// status taken before the removal. It is asked about every entry but
// directories.
type Counter func(st *unix.Stat_t) uint64

// RemoveTree removes path and everything below it as Nix's deletePath
// does: store trees are read-only (files 0444, directories 0555), so a
// directory is first made accessible (u+rwx) and then emptied; symbolic
// links are removed, never followed. A missing path, or an entry someone
// else removes meanwhile, is not an error. It returns the sum of count
// over the entries it removed (0 with a nil count).
func RemoveTree(path string, count Counter) (uint64, error) {
	return walkTree(path, count, true)
}

// TreeSize is what RemoveTree(path, count) would return, removing
// nothing.
func TreeSize(path string, count Counter) (uint64, error) {
	return walkTree(path, count, false)
}

func walkTree(path string, count Counter, remove bool) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if remove {
			if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
				return 0, &fs.PathError{Op: "unlink", Path: path, Err: err}
			}
		}
		if count == nil {
			return 0, nil
		}
		return count(&st), nil
	}
	if remove && st.Mode&0o700 != 0o700 {
		if err := unix.Chmod(path, st.Mode&0o7777|0o700); err != nil {
			return 0, &fs.PathError{Op: "chmod", Path: path, Err: err}
		}
	}
	names, err := readDirNames(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // removed meanwhile
	}
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, name := range names {
		m, err := walkTree(path+"/"+name, count, remove)
		n += m
		if err != nil {
			return n, err
		}
	}
	if remove {
		if err := unix.Rmdir(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return n, &fs.PathError{Op: "rmdir", Path: path, Err: err}
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
