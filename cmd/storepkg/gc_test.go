package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/internal/gcroottest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/store"
)

// runCLI runs storepkg with args in this process.
func runCLI(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetOut(&o)
	cmd.SetErr(&e)
	err = cmd.ExecuteContext(context.Background())
	return o.String(), e.String(), err
}

// TestGCRootsUnderRoot: `storepkg gc --root` on a store Nix made, with
// the roots of a NixOS machine (gcroottest.Layout) whose links name
// paths with --root as "/": it deletes only what none of them keeps and
// removes no link. Then roots it cannot resolve: it keeps every valid
// path, lists them and fails.
func TestGCRootsUnderRoot(t *testing.T) {
	nixtest.Require(t, "nix-store")
	root, src := t.TempDir(), t.TempDir()
	names := []string{"booted", "current", "system", "user", "result", "via-abs", "via-dotdot", "via-link-dotdot", "old-system", "old-result", "later"}
	var files []string
	for _, n := range names {
		f := filepath.Join(src, n)
		if err := os.WriteFile(f, []byte(n+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	paths := strings.Fields(nixtest.Run(t, "nix-store", append([]string{"--store", nixtest.StoreURI(root), "--add"}, files...)...))
	if len(paths) != len(names) {
		t.Fatalf("nix-store --add: %v", paths)
	}
	kept := gcroottest.Paths{Booted: paths[0], Current: paths[1], System: paths[2], User: paths[3], Result: paths[4],
		ViaAbsLink: paths[5], ViaDotDot: paths[6], ViaLinkDotDot: paths[7]}
	links := gcroottest.Layout(t, root, kept)
	dead := slices.Sorted(slices.Values(paths[8:10]))
	later := paths[10]
	// A file named like a store path is a root: later stays until the last step.
	laterRoot := filepath.Join(root, "nix", "var", "nix", "gcroots", filepath.Base(later))
	if err := os.WriteFile(laterRoot, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	exists := func(p string) bool {
		_, err := os.Lstat(filepath.Join(root, p))
		return err == nil
	}

	out, _, err := runCLI("gc", "--root", root, "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out); !slices.Equal(got, dead) {
		t.Errorf("gc --dry-run printed %v, want %v", got, dead)
	}
	out, _, err = runCLI("gc", "--root", root)
	if err != nil || !strings.Contains(out, "deleted 2 paths") {
		t.Fatalf("gc: %q, %v", out, err)
	}
	for _, p := range kept.Kept() {
		if !exists(p) {
			t.Errorf("%s deleted", p)
		}
	}
	for _, p := range dead {
		if exists(p) {
			t.Errorf("%s not deleted", p)
		}
	}
	for _, l := range links {
		if _, err := os.Lstat(l); err != nil {
			t.Errorf("link %s: %v", l, err)
		}
	}

	// Roots that cannot be resolved keep every valid path.
	if err := os.Remove(laterRoot); err != nil {
		t.Fatal(err)
	}
	unresolved := gcroottest.Unresolvable(t, root)
	out, stderr, err := runCLI("gc", "--root", root)
	if !errors.Is(err, store.ErrUnresolvedRoots) {
		t.Fatalf("gc: %q, %v; want ErrUnresolvedRoots", out, err)
	}
	if !exists(later) {
		t.Errorf("%s deleted although roots could not be resolved", later)
	}
	for _, l := range unresolved {
		if !strings.Contains(stderr, l) {
			t.Errorf("gc's standard error does not name %s:\n%s", l, stderr)
		}
	}
	t.Logf("gc: %v\n%s%s", err, out, stderr)
}
