package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TempSweepResult reports RemoveStaleTemporaries.
type TempSweepResult struct {
	// Removed: the temporary directories removed (with DryRun: that
	// would be), as names in the store directory.
	Removed    []string
	BytesFreed uint64
	// Kept: those left alone, because a live fetch holds their path's
	// lock, they changed less than MinAge ago, or their path's name
	// (shortened in the temporary name) cannot be told.
	Kept []string
}

// RemoveStaleTemporaries removes the temporary directories
// (TempPath, "*.storepkg-tmp") that fetches left when they were killed
// mid-NAR. One is removed only while this process holds its path's lock
// (LockPath), which every installer holds from PrepareInstall until the
// tree is renamed into place: a directory a live fetch is writing is
// never touched. It must also not have changed (its ctime) for minAge, a
// margin for the operator's peace of mind rather than for correctness.
//
// The lock is found from the temporary name, which keeps the path's hash
// and name. A name long enough to have been shortened is matched with
// the path's lock file, which a killed installer leaves; without one it
// is kept (a retry of the fetch, or the collector, removes it).
func (s *Store) RemoveStaleTemporaries(ctx context.Context, minAge time.Duration, dryRun bool) (*TempSweepResult, error) {
	res := &TempSweepResult{}
	entries, err := os.ReadDir(s.storeDir)
	if err != nil {
		return res, fmt.Errorf("store: reading %s: %w", s.storeDir, err)
	}
	var locks []string // lock files, for shortened names
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".lock") {
			locks = append(locks, e.Name())
		}
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, tmpSuffix) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		p, ok := s.tempOwner(name, locks)
		if !ok {
			res.Kept = append(res.Kept, name)
			continue
		}
		tmp := filepath.Join(s.storeDir, name)
		var st unix.Stat_t
		if err := unix.Lstat(tmp, &st); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("store: %s: %w", tmp, err))
			}
			continue
		}
		if minAge > 0 && time.Since(time.Unix(st.Ctim.Unix())) < minAge {
			res.Kept = append(res.Kept, name)
			continue
		}
		removed, freed, err := s.removeTemporary(ctx, p, tmp, dryRun)
		res.BytesFreed += freed
		switch {
		case err != nil:
			errs = append(errs, err)
		case removed:
			res.Removed = append(res.Removed, name)
		default:
			res.Kept = append(res.Kept, name)
		}
	}
	return res, errors.Join(errs...)
}

// tempOwner is the store path whose temporary directory name is.
func (s *Store) tempOwner(name string, locks []string) (storepath.Path, bool) {
	stem := strings.TrimSuffix(name, tmpSuffix)
	p, err := storepath.ParseBase(stem)
	if err != nil {
		return "", false
	}
	if len(p.Name()) < storepath.MaxNameLen-len(tmpSuffix)-1 {
		return p, true // not shortened (TempPath): the name is p's
	}
	var found storepath.Path
	for _, l := range locks {
		q, err := storepath.ParseBase(strings.TrimSuffix(l, ".lock"))
		if err == nil && q.HashPart() == p.HashPart() && s.TempPath(q) == filepath.Join(s.storeDir, name) {
			if found != "" && found != q {
				return "", false
			}
			found = q
		}
	}
	return found, found != ""
}

// removeTemporary removes tmp, p's temporary directory, if p's lock is
// free, holding it meanwhile. tmp's own name is a well-formed store path
// too, which Nix could be installing (under that path's lock) or have
// made valid: then it is not ours and is kept.
func (s *Store) removeTemporary(ctx context.Context, p storepath.Path, tmp string, dryRun bool) (removed bool, freed uint64, err error) {
	self, err := storepath.ParseBase(filepath.Base(tmp))
	if err != nil {
		return false, 0, nil
	}
	if dryRun {
		// Look without taking the locks: a dry run creates no lock file.
		for _, q := range []storepath.Path{p, self} {
			if held, err := lockHeld(s.RealPath(q) + ".lock"); err != nil || held {
				return false, 0, err
			}
		}
	} else {
		for _, q := range []storepath.Path{p, self} {
			lock, ok, err := s.LockPath(ctx, q, false)
			if err != nil || !ok {
				return false, 0, err
			}
			// Unlock deletes the lock file too, which a killed fetch left.
			defer lock.Unlock()
		}
	}
	valid, err := s.ValidSubset(ctx, []storepath.Path{self})
	if err != nil || valid[self] {
		return false, 0, err
	}
	if dryRun {
		freed, err = storefs.TreeSize(tmp, freedBy)
		return err == nil, freed, err
	}
	freed, err = storefs.RemoveTree(tmp, freedBy)
	if err != nil {
		return false, freed, fmt.Errorf("store: removing %s: %w", tmp, err)
	}
	return true, freed, nil
}

// lockHeld reports whether someone holds the lock file path, without
// creating it.
func lockHeld(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	ok, err := storefs.TryLock(f, storefs.Exclusive)
	return !ok, err
}
