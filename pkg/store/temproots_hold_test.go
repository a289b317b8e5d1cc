package store

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHoldTempRoots: held paths are roots for real Nix's collector and
// ours; released ones leave the roots file once it is compacted, and are
// then collected; roots added with AddTempRoots stay.
func TestHoldTempRoots(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	f := newGCFixture(t)
	pinned := f.add("pinned", nil, false, "", time.Time{})
	held := f.add("held", nil, false, "", time.Time{})
	released := f.add("released", nil, false, "", time.Time{})
	f.s.Close() // drops the installer's roots
	f.s = openStore(t, f.root)
	if err := f.s.AddTempRoots(ctx, pinned); err != nil {
		t.Fatal(err)
	}
	keepHeld, err := f.s.HoldTempRoots(ctx, held)
	if err != nil {
		t.Fatal(err)
	}
	defer keepHeld()
	before := fileRecords(t, f.s)
	// Holding again, many times over, appends nothing.
	var releases []func()
	for range 3 {
		r, err := f.s.HoldTempRoots(ctx, released, held, pinned)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	if got := fileRecords(t, f.s); len(got) != len(before)+1 {
		t.Fatalf("roots file after holding again: %q, want %q plus %s", got, before, released)
	}
	// Real Nix's collector sees every held root.
	if dead := nixDead(t, f.root); len(dead) != 0 {
		t.Fatalf("nix-store --gc --print-dead while held: %q", dead)
	}
	for _, r := range releases[:2] {
		r()
	}
	if dead := nixDead(t, f.root); len(dead) != 0 {
		t.Fatalf("nix-store --gc --print-dead while still held once: %q", dead)
	}

	defer func(old int) { compactSlack = old }(compactSlack)
	compactSlack = -2 // so that one released record (of two live) is enough
	releases[2]()
	releases[2]() // a second call is a no-op
	got := fileRecords(t, f.s)
	slices.Sort(got)
	want := []string{held.Absolute(), pinned.Absolute()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("roots file after compaction: %q, want %q", got, want)
	}
	if dead := nixDead(t, f.root); !slices.Equal(dead, []string{released.Absolute()}) {
		t.Fatalf("nix-store --gc --print-dead after release: %q, want only %s", dead, released)
	}
	// Adding after a compaction goes to the new file, which is locked
	// (Nix would otherwise remove it as stale).
	again, err := f.s.HoldTempRoots(ctx, released)
	if err != nil {
		t.Fatal(err)
	}
	defer again()
	if dead := nixDead(t, f.root); len(dead) != 0 {
		t.Fatalf("nix-store --gc --print-dead after holding again: %q", dead)
	}
	res, err := f.s.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dead) != 0 {
		t.Fatalf("our collector deleted %q", res.Dead)
	}
}

func fileRecords(t *testing.T, s *Store) []string {
	t.Helper()
	b, err := os.ReadFile(s.TempRootsFile())
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}
