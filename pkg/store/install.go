package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// ErrAlreadyValid is returned by PrepareInstall when the path is valid:
// someone installed it meanwhile, and there is nothing to do.
var ErrAlreadyValid = errors.New("already valid in store")

// tmpSuffix marks the temporary name a path is unpacked under.
const tmpSuffix = ".storepkg-tmp"

// TempPath returns the deterministic name p is unpacked under before
// CommitInstall renames it into place: <root>/nix/store/<hash of
// p>-<name of p>.storepkg-tmp (the name shortened when it would exceed
// Nix's 211 characters).
//
// It deliberately keeps p's hash part, which makes it a well-formed but
// never-valid store path name rather than an arbitrary one:
//
//   - Nix's collector deletes any entry of the store directory whose name
//     is not a store path at once, without looking at roots or locks, so
//     a ".tmp-…"-style name could be removed (or half-removed) under a
//     running unpack. Entries that parse as store paths are instead
//     spared when their hash part is a temporary root, so AddTempRoots(p)
//     protects TempPath(p) just as it protects p and p's ".lock" file –
//     the trick Nix itself uses for ".lock", ".chroot" and ".check".
//     Without a root, a leftover is garbage and the collector removes it.
//   - It can never be a real store path: the hash part of a store path
//     determines its name, and this name differs from p's.
//   - A rerun after SIGKILL computes the same name and removes it
//     (PrepareInstall).
func (s *Store) TempPath(p storepath.Path) string {
	name := p.Name()
	keep := min(len(name), storepath.MaxNameLen-len(tmpSuffix))
	tmpName := name[:keep] + tmpSuffix
	if tmpName == name { // only possible when shortened
		tmpName = name[:keep-1] + tmpSuffix
	}
	return filepath.Join(s.storeDir, p.HashPart()+"-"+tmpName)
}

// PrepareInstall clears the way for installing p and returns the
// (non-existent) temporary path to unpack it into. It removes what an
// earlier, killed attempt may have left: TempPath(p), and p's real path
// if it exists but p is not valid (a path appears valid only after
// Register, so such a tree may be incomplete). A valid p is left alone
// and the error wraps ErrAlreadyValid.
//
// The caller must hold p's lock (LockPath), and should have made p a
// temporary root first, so that neither another installer nor the
// garbage collector works on the same names meanwhile.
func (s *Store) PrepareInstall(ctx context.Context, p storepath.Path) (tmp string, err error) {
	tmp = s.TempPath(p)
	if err := RemoveTree(tmp); err != nil {
		return "", fmt.Errorf("store: removing leftover %s: %w", tmp, err)
	}
	valid, err := s.ValidSubset(ctx, []storepath.Path{p})
	if err != nil {
		return "", err
	}
	if valid[p] {
		return "", fmt.Errorf("store: install %s: %w", p.Absolute(), ErrAlreadyValid)
	}
	real := s.RealPath(p)
	if err := RemoveTree(real); err != nil {
		return "", fmt.Errorf("store: removing invalid leftover %s: %w", real, err)
	}
	return tmp, nil
}

// CommitInstall moves the unpacked tree tmp to p's real path with one
// rename(2), so p appears complete or not at all. It does not register
// p: the caller does that (Register) once p's references are valid.
func (s *Store) CommitInstall(tmp string, p storepath.Path) error {
	if filepath.Dir(tmp) != s.storeDir {
		return fmt.Errorf("store: commit %s: %s is not in %s", p.Absolute(), tmp, s.storeDir)
	}
	real := s.RealPath(p)
	// RENAME_NOREPLACE: never clobber what is there (rename(2) would
	// silently replace a regular file). Fall back to a plain rename on
	// file systems without it; a directory target still makes that fail.
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, real, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = os.Rename(tmp, real)
	}
	if err != nil {
		return fmt.Errorf("store: commit %s: renaming %s to %s: %w", p.Absolute(), tmp, real, err)
	}
	return nil
}

// AbortInstall removes a temporary tree after a failed unpack.
func (s *Store) AbortInstall(tmp string) error {
	if filepath.Dir(tmp) != s.storeDir {
		return fmt.Errorf("store: abort: %s is not in %s", tmp, s.storeDir)
	}
	if err := RemoveTree(tmp); err != nil {
		return fmt.Errorf("store: abort: %w", err)
	}
	return nil
}

// RemoveTree removes path and everything below it, as Nix's deletePath
// does (storefs.RemoveTree): store trees are read-only, so directories
// are made writable before their entries are removed. Symbolic links are
// removed, never followed. A missing path is not an error.
func RemoveTree(path string) error {
	_, err := storefs.RemoveTree(path, nil)
	return err
}
