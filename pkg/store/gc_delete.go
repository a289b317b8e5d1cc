package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/store/storefs"
)

// freedBy is what Nix's deletePath counts for a file it removes
// (storefs.Counter): its size if it has one or two links (two: probably
// shared only with .links, which the collector cleans up afterwards),
// nothing for directories or files with more links.
func freedBy(st *unix.Stat_t) uint64 {
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return 0
	}
	if st.Nlink == 1 || st.Nlink == 2 {
		return uint64(st.Size)
	}
	return 0
}

// deleteLockFile removes a store path's lock file if nobody holds it
// (storefs.DeleteLockFile). held=true means someone holds the lock; the
// file is left alone. (Nix 2.8's collector relies on temporary roots
// alone; holders of our locks have a temporary root too, so this only
// matters for lock holders that do not.) Anything but a regular file is
// deleted as any other tree.
func deleteLockFile(path string) (freed uint64, held bool, err error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if !fi.Mode().IsRegular() {
		freed, err := storefs.RemoveTree(path, freedBy)
		return freed, false, err
	}
	st, held, err := storefs.DeleteLockFile(path)
	if st != nil {
		freed = freedBy(st)
	}
	return freed, held, err
}

// removeUnusedLinks removes the files of /nix/store/.links that no store
// file shares any more (link count 1), as Nix's collector does after
// deleting. Their bytes were counted when the last store file using them
// was deleted.
func removeUnusedLinks(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: gc: %w", err)
	}
	n := 0
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
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
