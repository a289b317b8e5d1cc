package nar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// unusualTree has what a NAR writer can get wrong: every node kind,
// empty files and directories, files just around the buffer size, and
// names whose byte order differs from a locale's or a natural sort.
func unusualTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "empty-dir"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "d/e/f/g"), 0o700))
	must(os.WriteFile(filepath.Join(root, "bin/tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin/exec-only-owner"), []byte("x"), 0o744))
	must(os.WriteFile(filepath.Join(root, "bin/group-exec"), []byte("not executable for Nix"), 0o654))
	must(os.WriteFile(filepath.Join(root, "empty"), nil, 0o644))
	must(os.WriteFile(filepath.Join(root, "empty-exec"), nil, 0o755))
	for _, n := range []int{writeBufSize - 1, writeBufSize, writeBufSize + 1, 3*writeBufSize + 7} {
		must(os.WriteFile(filepath.Join(root, "size-"+strings.Repeat("n", n%7+1)+string(rune('a'+n%26))), bytes.Repeat([]byte{byte(n)}, n), 0o644))
	}
	for _, name := range []string{"B", "a", "Z", "_", "-", "10", "9", ".hidden", "é", "e\u0301", "z\xff", "A b", "~", "日本", "x.y", "x-y", "x_y", "X"} {
		must(os.WriteFile(filepath.Join(root, "d", name), []byte(name), 0o644))
	}
	must(os.Symlink("../empty", filepath.Join(root, "bin/rel")))
	must(os.Symlink("/nix/store/dangling", filepath.Join(root, "abs")))
	must(os.Symlink(strings.Repeat("long/", 200), filepath.Join(root, "long-target")))
	must(os.Symlink("d/e", filepath.Join(root, "dir-link")))
}

func writeTree(t *testing.T, path string) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := WriteTree(context.Background(), &b, path)
	if err != nil {
		t.Fatalf("WriteTree %s: %v", path, err)
	}
	if n != int64(b.Len()) {
		t.Fatalf("WriteTree %s returned %d bytes, wrote %d", path, n, b.Len())
	}
	return b.Bytes()
}

func nixDump(t *testing.T, path string) []byte {
	t.Helper()
	out, err := nixtest.Cmd("nix-store", "--dump", path).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", path, err)
	}
	return out
}

// TestWriteTreeMatchesNix: byte for byte what `nix-store --dump` writes,
// for a directory tree, a file, an executable and a symlink at the root.
func TestWriteTreeMatchesNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "tree")
	unusualTree(t, src)
	roots := []string{src, filepath.Join(src, "empty-dir"), filepath.Join(src, "bin/tool"),
		filepath.Join(src, "empty"), filepath.Join(src, "abs"), filepath.Join(src, "dir-link")}
	for _, root := range roots {
		want := nixDump(t, root)
		got := writeTree(t, root)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: WriteTree differs from nix-store --dump (%d vs %d bytes, first difference at %d)",
				root, len(got), len(want), firstDiff(got, want))
		}
	}
	// Relative paths work as absolute ones do.
	t.Chdir(tmp)
	if got, want := writeTree(t, "tree"), nixDump(t, src); !bytes.Equal(got, want) {
		t.Errorf("relative path: differs from nix-store --dump")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestWriteTreeNarHashOfNixPaths: for paths real Nix built and
// registered, the SHA-256 of what WriteTree writes is the NarHash and
// its length the NarSize in Nix's database.
func TestWriteTreeNarHashOfNixPaths(t *testing.T) {
	nixtest.Require(t, "nix-build", "nix-store")
	fx := nixtest.BuildClosure(t, t.TempDir())
	for _, p := range fx.Closure {
		info := []string{
			strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(fx.Store), "--query", "--hash", p)),
			strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(fx.Store), "--query", "--size", p)),
		}
		want, err := narinfo.ParseHash(info[0])
		if err != nil {
			t.Fatal(err)
		}
		real := filepath.Join(fx.Store, p)
		h := sha256.New()
		n, err := WriteTree(context.Background(), h, real)
		if err != nil {
			t.Fatal(err)
		}
		if got := narinfo.Hash(h.Sum(nil)); got != want {
			t.Errorf("%s: NarHash %s, Nix's database has %s", p, got, want)
		}
		if size := info[1]; size != strconv.FormatInt(n, 10) {
			t.Errorf("%s: NarSize %d, Nix's database has %s", p, n, size)
		}
	}
}

func TestWriteTreeErrors(t *testing.T) {
	tmp := t.TempDir()
	if _, err := WriteTree(context.Background(), &bytes.Buffer{}, filepath.Join(tmp, "missing")); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing path: %v, want a not-exist error naming it", err)
	}
	fifo := filepath.Join(tmp, "dir", "fifo")
	if err := os.MkdirAll(filepath.Dir(fifo), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteTree(context.Background(), &bytes.Buffer{}, filepath.Dir(fifo)); err == nil || !strings.Contains(err.Error(), fifo) {
		t.Errorf("fifo: %v, want an error naming %s", err, fifo)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := WriteTree(ctx, &bytes.Buffer{}, tmp); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
