package nar

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/storepkg/storepkg/internal/nartest"
	"github.com/storepkg/storepkg/internal/nixtest"
)

var (
	enc     = nartest.Encode
	file    = nartest.File
	dir     = nartest.Dir
	entry   = nartest.Entry
	archive = nartest.Archive
)

type rawPad = nartest.Raw

type discard struct{}

func (discard) Directory(string) error     { return nil }
func (discard) DirectoryDone(string) error { return nil }
func (discard) File(_ string, _ bool, size int64, r io.Reader) error {
	_, err := io.CopyN(io.Discard, r, size)
	return err
}
func (discard) Symlink(string, string) error { return nil }

func TestParseRejects(t *testing.T) {
	good := archive(dir(entry("a", file("x")), entry("b", file("y"))))
	if err := Parse(bytes.NewReader(good), discard{}); err != nil {
		t.Fatalf("good archive refused: %v", err)
	}
	deep := file("x")
	for i := 0; i <= MaxDepth+1; i++ {
		deep = dir(entry("d", deep))
	}
	cases := map[string]struct {
		nar  []byte
		want string
	}{
		"bad magic":        {enc("nix-archive-2", "(", "type", "regular", "contents", "", ")"), `expected "nix-archive-1"`},
		"empty input":      {nil, "unexpected end"},
		"truncated":        {good[:len(good)-9], "unexpected end"},
		"trailing data":    {append(append([]byte{}, good...), 0), "trailing data"},
		"nonzero padding":  {enc("nix-archive-1", "(", "type", "regular", "contents", rawPad{S: "abc", Pad: []byte{0, 0, 0, 0, 1}}, ")"), "non-zero padding"},
		"unknown type":     {archive([]any{"(", "type", "fifo", ")"}), `unknown node type "fifo"`},
		"unknown tag":      {archive([]any{"(", "type", "regular", "xattr", "", ")"}), `expected "contents"`},
		"executable value": {archive([]any{"(", "type", "regular", "executable", "1", "contents", "", ")"}), `expected ""`},
		"empty name":       {archive(dir(entry("", file("x")))), "empty name"},
		"dot name":         {archive(dir(entry(".", file("x")))), "reserved name"},
		"dotdot name":      {archive(dir(entry("..", file("x")))), "reserved name"},
		"slash name":       {archive(dir(entry("a/b", file("x")))), "contains '/'"},
		"nul name":         {archive(dir(entry("a\x00b", file("x")))), "contains NUL"},
		"unsorted":         {archive(dir(entry("b", file("x")), entry("a", file("y")))), "not sorted"},
		"duplicate":        {archive(dir(entry("a", file("x")), entry("a", file("y")))), "duplicate entry"},
		"long name":        {archive(dir(entry(strings.Repeat("n", 256), file("x")))), "exceeds the limit"},
		"empty target":     {archive([]any{"(", "type", "symlink", "target", "", ")"}), "invalid symlink target"},
		"long target":      {archive([]any{"(", "type", "symlink", "target", strings.Repeat("t", 4096), ")"}), "exceeds the limit"},
		"deep nesting":     {archive(deep), "nested deeper"},
		"huge token":       {enc("nix-archive-1", uint64(1<<40)), "exceeds the limit"},
		"file cut short":   {enc("nix-archive-1", "(", "type", "regular", "contents", uint64(100), []byte("abc")), "unexpected end"},
		"missing close":    {enc("nix-archive-1", "(", "type", "regular", "contents", "x", "entry"), `expected ")"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			err := Parse(bytes.NewReader(c.nar), discard{})
			if err == nil {
				t.Fatalf("accepted")
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %v does not wrap ErrFormat", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// makeTree creates a tree with every node kind Nix stores.
func makeTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "share/empty"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin/tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "share/data"), bytes.Repeat([]byte("0123456789"), 100000), 0o644))
	must(os.WriteFile(filepath.Join(root, "share/Zupper"), nil, 0o644))
	must(os.Symlink("../share/data", filepath.Join(root, "bin/link")))
	must(os.Symlink("/nix/store/dangling", filepath.Join(root, "abs")))
}

func TestRoundTripWithNix(t *testing.T) {
	nixtest.Require(t, "nix-store")
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src)
	want, err := nixtest.Cmd("nix-store", "--dump", src).Output()
	if err != nil {
		t.Fatalf("nix-store --dump: %v", err)
	}
	var ours bytes.Buffer
	if err := Dump(&ours, src); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours.Bytes(), want) {
		t.Fatalf("Dump differs from nix-store --dump (%d vs %d bytes)", ours.Len(), len(want))
	}
	dst := filepath.Join(t.TempDir(), "out")
	if err := Unpack(bytes.NewReader(want), dst); err != nil {
		t.Fatal(err)
	}
	again, err := nixtest.Cmd("nix-store", "--dump", dst).Output()
	if err != nil {
		t.Fatalf("nix-store --dump of unpacked tree: %v", err)
	}
	if !bytes.Equal(again, want) {
		t.Fatal("unpacked tree dumps differently")
	}
	checkCanonical(t, dst)
}

func checkCanonical(t *testing.T, root string) {
	t.Helper()
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.ModTime().Unix() != 1 {
			t.Errorf("%s: mtime %v, want 1", p, fi.ModTime().Unix())
		}
		switch perm := fi.Mode().Perm(); {
		case fi.Mode()&os.ModeSymlink != 0:
		case fi.IsDir() && perm != 0o555:
			t.Errorf("%s: dir mode %o", p, perm)
		case fi.Mode().IsRegular() && perm != 0o444 && perm != 0o555:
			t.Errorf("%s: file mode %o", p, perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUnpackSingleFileAndSymlinkRoots(t *testing.T) {
	tmp := t.TempDir()
	for name, n := range map[string][]byte{
		"file":    archive([]any{"(", "type", "regular", "executable", "", "contents", "#!x", ")"}),
		"symlink": archive([]any{"(", "type", "symlink", "target", "/nix/store/x", ")"}),
	} {
		dst := filepath.Join(tmp, name)
		if err := Unpack(bytes.NewReader(n), dst); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var back bytes.Buffer
		if err := Dump(&back, dst); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Bytes(), n) {
			t.Errorf("%s: round trip differs", name)
		}
	}
	checkCanonical(t, filepath.Join(tmp, "file"))
}

func FuzzParse(f *testing.F) {
	f.Add(archive(dir(entry("a", file("x")), entry("b", []any{"(", "type", "symlink", "target", "a", ")"}))))
	f.Add(archive([]any{"(", "type", "regular", "executable", "", "contents", "data", ")"}))
	f.Add(archive(dir()))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec := &recorder{}
		if err := Parse(bytes.NewReader(data), rec); err != nil {
			return
		}
		// Anything accepted is canonical: re-encoding it gives the same bytes.
		if !bytes.Equal(rec.encode(), data) {
			t.Fatalf("accepted a non-canonical archive")
		}
	})
}

// recorder re-encodes what it is fed, to check acceptance implies canonical form.
type recorder struct{ tokens []any }

func (r *recorder) open(path string) {
	if path != "" {
		r.tokens = append(r.tokens, "entry", "(", "name", path[strings.LastIndexByte(path, '/')+1:], "node")
	}
	r.tokens = append(r.tokens, "(", "type")
}

func (r *recorder) close(path string) {
	r.tokens = append(r.tokens, ")")
	if path != "" {
		r.tokens = append(r.tokens, ")")
	}
}

func (r *recorder) Directory(path string) error {
	r.open(path)
	r.tokens = append(r.tokens, "directory")
	return nil
}
func (r *recorder) DirectoryDone(path string) error { r.close(path); return nil }
func (r *recorder) File(path string, x bool, size int64, c io.Reader) error {
	r.open(path)
	r.tokens = append(r.tokens, "regular")
	if x {
		r.tokens = append(r.tokens, "executable", "")
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	r.tokens = append(r.tokens, "contents", string(b))
	r.close(path)
	return nil
}
func (r *recorder) Symlink(path, target string) error {
	r.open(path)
	r.tokens = append(r.tokens, "symlink", "target", target)
	r.close(path)
	return nil
}
func (r *recorder) encode() []byte { return enc(append([]any{"nix-archive-1"}, r.tokens...)...) }

// The parser reads its source in large chunks; it must not depend on how
// the source splits the stream, nor lose the source's errors.
func TestParseAnySplit(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 3*readBufSize/16+5) // spans several buffers
	n := archive(dir(
		entry("a", file("x")),
		entry("big", file(string(big))),
		entry("c", []any{"(", "type", "symlink", "target", strings.Repeat("t", MaxTargetLen), ")"}),
		entry("d", dir(entry("e", file("")))),
	))
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	}
	for name, wrap := range readers {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			if err := Parse(wrap(bytes.NewReader(n)), rec); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rec.encode(), n) {
				t.Fatal("parsed archive re-encodes differently")
			}
			dst := filepath.Join(t.TempDir(), "out")
			if err := Unpack(wrap(bytes.NewReader(n)), dst); err != nil {
				t.Fatal(err)
			}
			var back bytes.Buffer
			if err := Dump(&back, dst); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back.Bytes(), n) {
				t.Fatal("unpacked tree dumps differently")
			}
		})
	}
	// A source error part way, in a token or in file contents, is returned
	// as it is, not as a format error.
	boom := errors.New("boom")
	for _, cut := range []int{5, 100, 40 + readBufSize, len(n) - 3} {
		r := io.MultiReader(bytes.NewReader(n[:cut]), iotest.ErrReader(boom))
		if err := Unpack(r, filepath.Join(t.TempDir(), "out")); !errors.Is(err, boom) {
			t.Errorf("cut at %d: error %v, want %v", cut, err, boom)
		}
	}
}
