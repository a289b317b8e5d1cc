package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// GCRootPath returns the symlink AddGCRoot(name, …) creates:
// <root>/nix/var/nix/gcroots/storepkg/<name> (gcowner.RootsDir). Nix's
// collector scans gcroots recursively, so roots there count like any
// other.
func (s *Store) GCRootPath(name string) string {
	return filepath.Join(gcowner.RootsDir(s.root), name)
}

// AddGCRoot makes p a permanent GC root named name: a symlink
// gcroots/storepkg/<name> -> /nix/store/<base>. The target is the
// logical store path, as in Nix's roots; Nix resolves it against its own
// store directory, also for a store under another root. Re-adding is a
// no-op; adding an existing name for another path re-points it
// atomically.
//
// As Nix's addPermRoot does, p is first made a temporary root: a running
// collector has already read the permanent roots and would not see the
// new link.
func (s *Store) AddGCRoot(ctx context.Context, name string, p storepath.Path) error {
	if err := gcowner.CheckName(name); err != nil {
		return err
	}
	if err := s.AddTempRoots(ctx, p); err != nil {
		return err
	}
	link := s.GCRootPath(name)
	target := p.Absolute()
	fi, err := os.Lstat(link)
	switch {
	case err == nil && fi.Mode()&fs.ModeSymlink == 0:
		return fmt.Errorf("store: GC root %s exists and is not a symlink", link)
	case err == nil:
		if cur, err := os.Readlink(link); err == nil && cur == target {
			return nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("store: GC root %s: %w", link, err)
	}
	dir := filepath.Dir(link)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("store: creating %s: %w", dir, err)
	}
	// Create aside and rename over, as Nix's makeSymlink does, so the
	// root never disappears while being re-pointed.
	tmp := fmt.Sprintf("%s.tmp-%d-%s", link, os.Getpid(), strconv.FormatUint(uint64(rand.Uint32()), 36))
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("store: creating GC root %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store: creating GC root %s: %w", link, err)
	}
	return nil
}

// RemoveGCRoot removes the root name; removing a missing root is not an
// error. It refuses to remove anything but a symlink.
func (s *Store) RemoveGCRoot(name string) error {
	return gcowner.RemoveRoot(s.root, name)
}
