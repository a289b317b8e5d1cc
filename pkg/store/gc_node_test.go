package store

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/store/views"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestCollectNodeGarbage: the node's collection first removes the roots
// of a shim that is gone and the store views no container uses, so the
// paths they kept are collected in the same run; a dry run reports the
// three steps and changes nothing.
func TestCollectNodeGarbage(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t)
	blob := func(name string) storepath.Path {
		p := fakePath(t, name)
		f.register(p, []treeEntry{{content: strings.Repeat("x", 10000)}}, nil, false, "", time.Time{})
		return p
	}
	pinned, viewed, other := blob("pinned"), blob("viewed"), blob("other")
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if err := gcowner.Write(f.root, "gone-sandbox", procid.ID{PID: gone.Process.Pid, PIDNamespace: procid.Self().PIDNamespace}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.AddGCRoot(ctx, gcowner.RootName("gone-sandbox", pinned), pinned); err != nil {
		t.Fatal(err)
	}
	if _, err := views.Ensure(ctx, f.root, []storepath.Path{viewed}); err != nil {
		t.Fatal(err)
	}
	f.s.Close()
	gs := openStore(t, f.root)
	viewsDir := filepath.Join(f.root, views.Dir)

	dry, err := gs.CollectNodeGarbage(ctx, GCOptions{DryRun: true})
	if err != nil || dry.SweepErr != nil || dry.PruneErr != nil {
		t.Fatalf("dry run: %v, %v, %v", err, dry.SweepErr, dry.PruneErr)
	}
	if !slices.Equal(dry.Swept.Owners, []string{"gone-sandbox"}) || len(dry.Views.Removed) != 1 {
		t.Errorf("dry run swept %v, pruned %v", dry.Swept.Owners, dry.Views.Removed)
	}
	// The dry run's sweep removed nothing, so the pinned path still counts.
	if got, want := sortedDead(dry.GC), slices.Sorted(slices.Values(absAll([]storepath.Path{viewed, other}))); !slices.Equal(got, want) {
		t.Errorf("dry run: dead %v, want %v", got, want)
	}
	if _, err := os.Lstat(gs.GCRootPath(gcowner.RootName("gone-sandbox", pinned))); err != nil {
		t.Errorf("dry run removed the root: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(viewsDir, "*", "store")); len(left) != 1 {
		t.Errorf("dry run removed the view: %v", left)
	}

	res, err := gs.CollectNodeGarbage(ctx, GCOptions{})
	if err != nil || res.SweepErr != nil || res.PruneErr != nil {
		t.Fatalf("collection: %v, %v, %v", err, res.SweepErr, res.PruneErr)
	}
	if !slices.Equal(res.Swept.Owners, []string{"gone-sandbox"}) || len(res.Views.Removed) != 1 || res.GC.Valid != 3 {
		t.Errorf("swept %v, pruned %v, collected %v", res.Swept.Owners, res.Views.Removed, res.GC.Dead)
	}
	if res.BytesFreed() != res.GC.BytesFreed+res.Views.BytesFreed || res.BytesFreed() < 3*10000 {
		t.Errorf("BytesFreed %d: views %d, collection %d", res.BytesFreed(), res.Views.BytesFreed, res.GC.BytesFreed)
	}
	assertGone(t, gs, pinned, viewed, other)
	if left, _ := os.ReadDir(viewsDir); len(left) != 0 {
		t.Errorf("left in the views directory: %v", left)
	}
}

// TestCollectNodeGarbageMaxFreed: the bytes a view frees (the last links
// of paths collected before) count towards MaxFreed; when they are
// enough, no collection runs.
func TestCollectNodeGarbageMaxFreed(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t)
	gone, kept := fakePath(t, "gone"), fakePath(t, "kept")
	for _, p := range []storepath.Path{gone, kept} {
		f.register(p, []treeEntry{{content: strings.Repeat("x", 10000)}}, nil, false, "", time.Time{})
	}
	if _, err := views.Ensure(ctx, f.root, []storepath.Path{gone}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.AddGCRoot(ctx, "kept", kept); err != nil {
		t.Fatal(err)
	}
	f.s.Close()
	gs := openStore(t, f.root)
	// A plain collection deletes the path; the view keeps its file.
	if res, err := gs.CollectGarbage(ctx, GCOptions{}); err != nil || res.Valid != 1 {
		t.Fatalf("collection: %v, %v", res, err)
	}
	if err := gs.RemoveGCRoot("kept"); err != nil {
		t.Fatal(err)
	}

	res, err := gs.CollectNodeGarbage(ctx, GCOptions{MaxFreed: 1})
	if err != nil || len(res.Views.Removed) != 1 || res.Views.BytesFreed < 10000 || res.GC != nil {
		t.Fatalf("the view's bytes did not count: %+v, %v", res, err)
	}
	assertValid(t, gs, kept)
	res, err = gs.CollectNodeGarbage(ctx, GCOptions{MaxFreed: 1})
	if err != nil || res.GC == nil || res.GC.Valid != 1 {
		t.Fatalf("second run: %+v, %v", res, err)
	}
	assertGone(t, gs, kept)
}
