package views

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// PruneOptions says which views Prune removes besides those that
// can no longer be used (see Prune).
type PruneOptions struct {
	// Unused also removes views that no live container uses although
	// their store paths are all still there: the node's collection
	// (store.CollectNodeGarbage, for `storepkg gc` and the node agent)
	// sets it before collecting garbage, so that the collector's
	// deletions free their space at once.
	Unused bool
	// MinIdle keeps, with Unused, the unused views built or last used
	// less than this long ago (a view built after a prefetch for a
	// container not created yet).
	MinIdle time.Duration
	// DryRun counts what would be removed and removes nothing.
	DryRun bool
}

// PruneResult is what Prune removed (or would remove).
type PruneResult struct {
	Removed    []string // keys of the views removed (retired copies included)
	Kept       int      // views kept: in use, busy, or (without Unused) current
	BytesFreed uint64   // bytes of files whose last link was in a removed view
}

// Prune removes, under storeRoot, the store views that nothing
// needs: always the leftovers of interrupted builds and deletions,
// retired views no live container uses, and unused views that no longer
// match the store (a path of theirs was deleted or replaced: their hard
// links are what keeps the old files' space) or were built in an earlier
// boot (a crash may have left them incomplete); with opts.Unused, every
// view no live container uses. A user whose Alive directory is gone is
// dropped first. Views locked by a build or an acquire in progress are
// skipped. Safe to run at any time, from any process: the shim on
// container delete, `storepkg gc` and the node agent call it.
func Prune(ctx context.Context, storeRoot string, opts PruneOptions) (*PruneResult, error) {
	res := &PruneResult{}
	dir := viewsDir(storeRoot)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("view: prune: %w", err)
	}
	hostStore := filepath.Join(storeRoot, storepath.StoreDir)
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		name := e.Name()
		p := filepath.Join(dir, name)
		switch {
		case strings.HasPrefix(name, ".trash-"):
			if !opts.DryRun {
				n, err := removeTree(p)
				res.BytesFreed += n
				errs = append(errs, err)
			}
		case strings.HasPrefix(name, ".build-"):
			key, _, _ := strings.Cut(strings.TrimPrefix(name, ".build-"), "-")
			lock, err := lockView(ctx, dir, key, false)
			if err != nil || lock == nil {
				errs = append(errs, err)
				continue // a build in progress
			}
			if !opts.DryRun {
				_, err = deleteView(dir, p)
				errs = append(errs, err)
			}
			lock.Release()
		case strings.HasPrefix(name, ".old-"):
			key, _, _ := strings.Cut(strings.TrimPrefix(name, ".old-"), "-")
			if len(liveUsers(p)) > 0 {
				res.Kept++
				continue
			}
			res.Removed = append(res.Removed, key)
			if !opts.DryRun {
				n, err := deleteView(dir, p)
				res.BytesFreed += n
				errs = append(errs, err)
			}
		case strings.HasSuffix(name, ".lock"):
			key := strings.TrimSuffix(name, ".lock")
			if _, err := os.Lstat(filepath.Join(dir, key)); !errors.Is(err, fs.ErrNotExist) || opts.DryRun {
				continue
			}
			lock, err := lockView(ctx, dir, key, false)
			if err != nil || lock == nil {
				errs = append(errs, err)
				continue
			}
			if _, err := os.Lstat(filepath.Join(dir, key)); errors.Is(err, fs.ErrNotExist) {
				lock.Delete()
			}
			lock.Release()
		case e.IsDir():
			removed, freed, err := pruneView(ctx, dir, name, hostStore, opts)
			errs = append(errs, err)
			if removed {
				res.Removed = append(res.Removed, name)
				res.BytesFreed += freed
			} else {
				res.Kept++
			}
		}
	}
	return res, errors.Join(errs...)
}

// pruneView decides on the current view key, under its lock.
func pruneView(ctx context.Context, dir, key, hostStore string, opts PruneOptions) (removed bool, freed uint64, err error) {
	lock, err := lockView(ctx, dir, key, false)
	if err != nil || lock == nil {
		return false, 0, err // busy: being built or acquired
	}
	defer lock.Release()
	p := filepath.Join(dir, key)
	if len(liveUsers(p)) > 0 {
		return false, 0, nil
	}
	remove := false
	if opts.Unused {
		remove = true
		if opts.MinIdle > 0 {
			if fi, err := os.Stat(filepath.Join(p, "users")); err == nil && time.Since(fi.ModTime()) < opts.MinIdle {
				remove = false
			}
		}
	}
	if !remove {
		_, m, err := readManifest(filepath.Join(p, "manifest"))
		names := make([]string, len(m))
		for i, e := range m {
			names[i] = e.name
		}
		if err != nil {
			remove = true
		} else if _, ok, err := viewMatches(p, hostStore, names); err != nil {
			return false, 0, err
		} else {
			remove = !ok
		}
	}
	if !remove {
		return false, 0, nil
	}
	if opts.DryRun {
		return true, 0, nil
	}
	freed, err = deleteView(dir, p)
	if err == nil {
		lock.Delete()
	}
	return true, freed, err
}
