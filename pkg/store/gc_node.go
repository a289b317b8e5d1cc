package store

import (
	"context"

	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/store/views"
)

// NodeGCResult reports CollectNodeGarbage, step by step.
type NodeGCResult struct {
	// Temporaries: the temporary directories of killed fetches removed
	// (with DryRun: that would be); TempErr: why that failed, if it did.
	Temporaries *TempSweepResult
	TempErr     error
	// Swept: the GC roots of shims that are gone, removed (with DryRun:
	// found); SweepErr: why sweeping failed, if it did.
	Swept    *gcowner.SweepResult
	SweepErr error
	// Views: the store views removed (with DryRun: that would be);
	// PruneErr: why pruning failed, if it did.
	Views    *views.PruneResult
	PruneErr error
	// GC is the collection's result; nil when the views alone freed
	// MaxFreed and no collection ran.
	GC *GCResult
}

// BytesFreed is what the views and the collection freed together.
func (r *NodeGCResult) BytesFreed() uint64 {
	var n uint64
	if r.Temporaries != nil {
		n += r.Temporaries.BytesFreed
	}
	if r.Views != nil {
		n += r.Views.BytesFreed
	}
	if r.GC != nil {
		n += r.GC.BytesFreed
	}
	return n
}

// CollectNodeGarbage collects garbage on a storepkg node, for
// `storepkg gc` and the node agent. Before the collection proper
// (CollectGarbage with opts) it removes what would keep garbage alive
// or its space taken:
//
//  1. the temporary directories of fetches that were killed mid-NAR,
//     unchanged for opts.MinAge, whose path's lock no live fetch holds
//     (RemoveStaleTemporaries);
//  2. the GC roots of shims that are gone (killed, or from before a
//     reboot), which would pin their pods' closures for good
//     (gcowner.Sweep);
//  3. the store views no live container uses and nothing used for
//     opts.MinAge (views.Prune): their hard links keep the inodes of the
//     paths the collection deletes, so without this no space would come
//     back;
//  4. the collection, asked to free what opts.MaxFreed leaves after the
//     temporary directories' and the views' bytes, and not run at all
//     when they freed enough.
//
// A failed removal, sweep or prune only makes the collection keep more,
// so it is reported in the result and the collection runs anyway; the
// error returned is the collection's.
func (s *Store) CollectNodeGarbage(ctx context.Context, opts GCOptions) (*NodeGCResult, error) {
	res := &NodeGCResult{}
	res.Temporaries, res.TempErr = s.RemoveStaleTemporaries(ctx, max(opts.MinAge, 0), opts.DryRun)
	res.Swept, res.SweepErr = gcowner.Sweep(s.root, opts.DryRun)
	res.Views, res.PruneErr = views.Prune(ctx, s.root, views.PruneOptions{
		Unused: true, MinIdle: max(opts.MinAge, 0), DryRun: opts.DryRun,
	})
	if opts.MaxFreed > 0 {
		freed := res.Views.BytesFreed + res.Temporaries.BytesFreed
		if freed >= opts.MaxFreed {
			return res, nil
		}
		opts.MaxFreed -= freed
	}
	var err error
	res.GC, err = s.CollectGarbage(ctx, opts)
	return res, err
}
