package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/pkg/storepath"
)

func TestTempPath(t *testing.T) {
	s := openStore(t, t.TempDir())
	p := fakePath(t, "hello-2.12")
	tmp := s.TempPath(p)
	if tmp != s.TempPath(p) || filepath.Dir(tmp) != s.StoreDir() {
		t.Fatalf("TempPath %q not deterministic or not in the store", tmp)
	}
	base := filepath.Base(tmp)
	// Same hash part (so a temporary root on p covers it), and a
	// well-formed name (so Nix's GC honours that root), but not p.
	tp, err := storepath.ParseBase(base)
	if err != nil || tp.HashPart() != p.HashPart() || tp == p {
		t.Fatalf("TempPath base %q: %v", base, err)
	}
	// Names at Nix's limit stay within it and still differ from p.
	for _, n := range []int{198, 199, 210, 211} {
		name := strings.Repeat("x", n-len(tmpSuffix)) + tmpSuffix
		q, err := storepath.ParseBase(p.HashPart() + "-" + name)
		if err != nil {
			t.Fatal(err)
		}
		tq, err := storepath.ParseBase(filepath.Base(s.TempPath(q)))
		if err != nil || tq == q {
			t.Errorf("TempPath for a %d-char name: %q, %v", n, tq, err)
		}
	}
}

func TestPrepareInstall(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	p := fakePath(t, "leftovers")

	// A killed unpack (read-only, like a real one) and a committed but
	// never registered final tree.
	tmp := s.TempPath(p)
	writeTree(t, tmp, []treeEntry{{name: "a/b/c", content: "x"}, {name: "a/d", content: "y", exec: true}})
	if err := os.Symlink("/nonexistent", filepath.Join(s.StoreDir(), "link-target-is-irrelevant")); err != nil {
		t.Fatal(err)
	}
	final := s.RealPath(p)
	writeTree(t, final, []treeEntry{{name: "sub/file", content: "partial"}})

	l, ok, err := s.LockPath(ctx, p, false)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	defer l.Unlock()
	got, err := s.PrepareInstall(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if got != tmp {
		t.Errorf("PrepareInstall = %q, want %q", got, tmp)
	}
	for _, f := range []string{tmp, final} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", f, err)
		}
	}

	// Unpack, commit, register; then PrepareInstall must leave it alone.
	writeTree(t, tmp, []treeEntry{{name: "f", content: "z"}})
	if err := s.CommitInstall(tmp, p); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, []PathInfo{{Path: p, NarHash: [32]byte{1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PrepareInstall(ctx, p); !errors.Is(err, ErrAlreadyValid) {
		t.Fatalf("PrepareInstall of a valid path = %v", err)
	}
	// CommitInstall never replaces what is there.
	writeTree(t, tmp, []treeEntry{{content: "other"}})
	if err := s.CommitInstall(tmp, p); err == nil {
		t.Fatal("CommitInstall over an existing path succeeded")
	}
	if err := RemoveTree(tmp); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(final, "f")); err != nil {
		t.Fatalf("valid path damaged: %v", err)
	}

	// A file-only path (the NAR of a regular file) and AbortInstall.
	q := fakePath(t, "single-file")
	tmpq, err := s.PrepareInstall(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, tmpq, []treeEntry{{content: "file"}})
	if err := s.AbortInstall(tmpq); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tmpq); !os.IsNotExist(err) {
		t.Fatalf("AbortInstall left %s", tmpq)
	}
	if err := s.AbortInstall("/etc/passwd"); err == nil {
		t.Fatal("AbortInstall outside the store succeeded")
	}
}

func TestGCRootNames(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	p, q := fakePath(t, "p"), fakePath(t, "q")
	for _, bad := range []string{"", ".", "..", "a/b", "../x", "a\x00b"} {
		if err := s.AddGCRoot(ctx, bad, p); err == nil {
			t.Errorf("AddGCRoot(%q) succeeded", bad)
		}
		if err := s.RemoveGCRoot(bad); err == nil {
			t.Errorf("RemoveGCRoot(%q) succeeded", bad)
		}
	}
	if err := s.AddGCRoot(ctx, "c1", p); err != nil {
		t.Fatal(err)
	}
	if err := s.AddGCRoot(ctx, "c1", q); err != nil { // re-point
		t.Fatal(err)
	}
	link := filepath.Join(s.StateDir(), "gcroots", "storepkg", "c1")
	if got, err := os.Readlink(link); err != nil || got != q.Absolute() {
		t.Fatalf("root = %q, %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(link))
	if len(entries) != 1 {
		t.Errorf("stray files next to the root: %v", entries)
	}
	if err := s.RemoveGCRoot("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Fatalf("root still there: %v", err)
	}
	os.WriteFile(filepath.Join(filepath.Dir(link), "plain"), nil, 0o644)
	if err := s.AddGCRoot(ctx, "plain", p); err == nil {
		t.Error("AddGCRoot over a regular file succeeded")
	}
	if err := s.RemoveGCRoot("plain"); err == nil {
		t.Error("RemoveGCRoot of a regular file succeeded")
	}
}
