package storefs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRemoveTree: a read-only tree goes, symlinks are not followed, and
// the counter sees every non-directory once, for TreeSize as for
// RemoveTree.
func TestRemoveTree(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	if err := os.WriteFile(outside, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"a/b", "c"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"a/b/f1", "c/f2", "f3"} {
		if err := os.WriteFile(filepath.Join(tree, f), []byte("12345"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(tree, "c", "link")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a/b", "a", "c", ""} {
		if err := os.Chmod(filepath.Join(tree, d), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	size := func(st *unix.Stat_t) uint64 { return uint64(st.Size) }
	want := uint64(3*5 + len(outside))
	if n, err := TreeSize(tree, size); n != want || err != nil {
		t.Errorf("TreeSize = %d, %v; want %d", n, err, want)
	}
	if n, err := RemoveTree(tree, size); n != want || err != nil {
		t.Errorf("RemoveTree = %d, %v; want %d", n, err, want)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a symlink's target was removed: %v", err)
	}
	if n, err := RemoveTree(tree, size); n != 0 || err != nil {
		t.Errorf("RemoveTree of a missing path = %d, %v", n, err)
	}
}
