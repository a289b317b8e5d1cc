package store

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestGCUnsignedDeriver checks that a path's Deriver, a field no narinfo
// signature covers, keeps only what Nix 2.8's collector reliably keeps
// for it: with keep-derivations on, a valid .drv that lists the path
// among its outputs. A live path whose Deriver names a valid path that is
// not a derivation, or a derivation that does not list it, keeps neither;
// our collection and `nix-store --gc --print-dead` agree on it.
//
// Nix 2.8 also puts a live path's valid deriver, any deriver, in the
// closure it marks alive when it meets the path; it meets it only when it
// reads the path's store entry, so it keeps such a deriver when readdir
// lists the path before the deriver and deletes it otherwise. Each false
// deriver here is therefore named by a path that readdir lists after it,
// the order in which Nix deletes it as we always do.
func TestGCUnsignedDeriver(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	f := newGCFixture(t)
	s := f.s

	// The honest case: a live output keeps the .drv that built it.
	out := fakePath(t, "honest")
	drv := fakePath(t, "honest.drv")
	f.addDrv(drv, out)
	f.register(out, []treeEntry{{content: "honest\n"}}, nil, false, drv, time.Time{})
	if err := s.AddGCRoot(ctx, "honest", out); err != nil {
		t.Fatal(err)
	}

	// False derivers: valid paths that are not derivations, and valid
	// derivations whose outputs are other paths. Some are made before
	// the paths that will name them and some after, so that whatever
	// order the file system lists entries in (creation, reverse
	// creation, hash), some false deriver comes before some claimant.
	var notDrvs, otherDrvs []storepath.Path
	victims := func(from, to int) {
		for i := from; i < to; i++ {
			notDrvs = append(notDrvs, f.add(fmt.Sprintf("not-a-drv-%d", i), nil, false, "", time.Time{}))
			d := fakePath(t, fmt.Sprintf("unrelated-%d.drv", i))
			f.addDrv(d, fakePath(t, fmt.Sprintf("unrelated-%d", i)))
			otherDrvs = append(otherDrvs, d)
		}
	}
	victims(0, 4)
	var claimants []PathInfo
	for i := range 8 {
		p := fakePath(t, fmt.Sprintf("claimant-%d", i))
		claimants = append(claimants, install(t, s, p, []treeEntry{{content: p.Name() + "\n"}}))
	}
	victims(4, 8)

	order := readdirOrder(t, s.StoreDir())
	used := map[int]bool{}
	pick := func(what string, cands []storepath.Path) (PathInfo, storepath.Path) {
		t.Helper()
		for ci, c := range claimants {
			if used[ci] {
				continue
			}
			for _, v := range cands {
				if order[v.Base()] < order[c.Path.Base()] {
					used[ci] = true
					return c, v
				}
			}
		}
		t.Fatalf("readdir lists no %s before an unused claimant: %v", what, order)
		return PathInfo{}, ""
	}
	notDrvClaimant, notDrv := pick("non-derivation", notDrvs)
	otherDrvClaimant, otherDrv := pick("unrelated derivation", otherDrvs)
	notDrvClaimant.Deriver = notDrv.Base()
	otherDrvClaimant.Deriver = otherDrv.Base()
	var infos []PathInfo
	for ci, c := range claimants {
		switch {
		case c.Path == notDrvClaimant.Path:
			c = notDrvClaimant
		case c.Path == otherDrvClaimant.Path:
			c = otherDrvClaimant
		}
		if !used[ci] {
			c.Deriver = "" // dead anyway
		}
		infos = append(infos, c)
	}
	if err := s.Register(ctx, infos); err != nil {
		t.Fatal(err)
	}
	for _, c := range []PathInfo{notDrvClaimant, otherDrvClaimant} {
		if err := s.AddGCRoot(ctx, c.Path.Name(), c.Path); err != nil {
			t.Fatal(err)
		}
	}
	// Nix reads the Deriver as we wrote it.
	for _, c := range []PathInfo{notDrvClaimant, otherDrvClaimant} {
		got := strings.TrimSpace(nixStore(t, f.root, "-q", "--deriver", c.Path.Absolute()))
		if want := storepath.StoreDir + "/" + c.Deriver; got != want {
			t.Fatalf("nix-store -q --deriver %s = %q, want %q", c.Path, got, want)
		}
	}
	if err := s.Close(); err != nil { // drops install's temporary roots
		t.Fatal(err)
	}
	gs := openStore(t, f.root)

	for _, tc := range []struct {
		name     string
		opts     GCOptions
		nixOpts  []string
		drvLives bool
	}{
		{"keep-derivations", GCOptions{DryRun: true}, nil, true},
		{"no-keep-derivations", GCOptions{DryRun: true, NoKeepDerivations: true},
			[]string{"--option", "keep-derivations", "false"}, false},
	} {
		ours, err := gs.CollectGarbage(ctx, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		dead := sortedDead(ours)
		for _, v := range []storepath.Path{notDrv, otherDrv} {
			if !slices.Contains(dead, v.Absolute()) {
				t.Errorf("%s: %s, named only by an unsigned Deriver, is not dead", tc.name, v)
			}
		}
		for _, p := range []storepath.Path{out, notDrvClaimant.Path, otherDrvClaimant.Path} {
			if slices.Contains(dead, p.Absolute()) {
				t.Errorf("%s: rooted %s is dead", tc.name, p)
			}
		}
		if got := !slices.Contains(dead, drv.Absolute()); got != tc.drvLives {
			t.Errorf("%s: the honest deriver %s lives: %v, want %v", tc.name, drv, got, tc.drvLives)
		}
		if theirs := nixDead(t, f.root, tc.nixOpts...); !slices.Equal(theirs, dead) {
			t.Errorf("%s: nix-store --gc --print-dead:\n%s\nours:\n%s", tc.name, strings.Join(theirs, "\n"), strings.Join(dead, "\n"))
		}
	}

	res, err := gs.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertGone(t, gs, notDrv, otherDrv)
	assertValid(t, gs, out, drv, notDrvClaimant.Path, otherDrvClaimant.Path)
	t.Logf("deleted %d paths; kept %s and %s", len(res.Dead), drv, out)
}

// readdirOrder is the position of each entry of dir in the order the
// kernel lists them (os.ReadDir would sort them), the order Nix's
// collector reads the store directory in.
func readdirOrder(t *testing.T, dir string) map[string]int {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	order := make(map[string]int, len(names))
	for i, n := range names {
		order[n] = i
	}
	return order
}
