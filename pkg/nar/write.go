package nar

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrChanged is wrapped when the tree changed while it was being
// written (a file's size or type), so the archive written is not the
// serialisation of any one state of the tree.
var ErrChanged = errors.New("tree changed while being written")

// writeBufSize batches the small tokens of an archive; file contents of
// more than that bypass the buffer, so a destination that can take a
// file directly (a TCP connection: sendfile) gets it.
const writeBufSize = 64 << 10

var writeBufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}

// WriteTree writes the NAR serialisation of the tree at path to w,
// byte-identical to `nix-store --dump path`: directory entries in byte
// order, of a file's mode only the owner's executable bit, symlinks
// never followed (not even path itself). It streams: memory stays at
// one buffer and one directory's names whatever the tree's size. It
// returns the bytes written; ctx is checked between entries.
//
// Entries are opened relative to their parent directory's descriptor
// and without following links, so a tree changed meanwhile cannot lead
// the writer outside it; a change it notices fails with ErrChanged.
func WriteTree(ctx context.Context, w io.Writer, path string) (int64, error) {
	bw := writeBufPool.Get().(*bufio.Writer)
	cw := &countingWriter{w: w}
	bw.Reset(cw)
	defer func() {
		bw.Reset(nil)
		writeBufPool.Put(bw)
	}()
	tw := &treeWriter{ctx: ctx, w: bw}
	dir, base := filepath.Split(filepath.Clean(path))
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	tw.str(magic)
	if base == "" || base == "/" {
		// The root directory itself.
		err = tw.dir(dfd, path)
	} else {
		err = tw.node(dfd, base, path)
	}
	if err == nil {
		err = tw.err
	}
	if err == nil {
		err = bw.Flush()
	}
	return cw.n, err
}

// Dump is WriteTree without a context or count, for callers that only
// need the bytes.
func Dump(w io.Writer, path string) error {
	_, err := WriteTree(context.Background(), w, path)
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// ReadFrom passes big file contents on to w's ReadFrom (sendfile on a
// TCP connection) when w has one.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.w, r)
	c.n += n
	return n, err
}

type treeWriter struct {
	ctx context.Context
	w   *bufio.Writer
	err error // first write error; later writes are skipped
}

func (t *treeWriter) u64(n uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	if t.err == nil {
		_, t.err = t.w.Write(b[:])
	}
}

func (t *treeWriter) pad(n uint64) {
	var zero [8]byte
	if p := (8 - n%8) % 8; p != 0 && t.err == nil {
		_, t.err = t.w.Write(zero[:p])
	}
}

func (t *treeWriter) str(s string) {
	t.u64(uint64(len(s)))
	if t.err == nil {
		_, t.err = t.w.WriteString(s)
	}
	t.pad(uint64(len(s)))
}

// node writes the entry name of the directory dfd; path names it in
// errors.
func (t *treeWriter) node(dfd int, name, path string) error {
	if err := t.ctx.Err(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return t.file(dfd, name, path, &st)
	case unix.S_IFLNK:
		target, err := readlinkat(dfd, name, st.Size)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: path, Err: err}
		}
		t.str("(")
		t.str("type")
		t.str("symlink")
		t.str("target")
		t.str(target)
		t.str(")")
		return t.err
	case unix.S_IFDIR:
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return changedOr(&os.PathError{Op: "open", Path: path, Err: err}, err)
		}
		defer unix.Close(fd)
		return t.dir(fd, path)
	default:
		return fmt.Errorf("nar: %s: unsupported file type %s", path, os.FileMode(st.Mode&unix.S_IFMT).Type())
	}
}

// changedOr marks errors that mean an entry's type changed between the
// stat and the open (ELOOP: now a symlink; ENOTDIR: no longer a directory).
func changedOr(err error, errno error) error {
	if errors.Is(errno, unix.ELOOP) || errors.Is(errno, unix.ENOTDIR) {
		return fmt.Errorf("nar: %w: %w", ErrChanged, err)
	}
	return err
}

func (t *treeWriter) file(dfd int, name, path string, st *unix.Stat_t) error {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return changedOr(&os.PathError{Op: "open", Path: path, Err: err}, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil {
		return &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if fst.Mode&unix.S_IFMT != unix.S_IFREG || fst.Ino != st.Ino || fst.Dev != st.Dev {
		return fmt.Errorf("nar: %w: %s was replaced", ErrChanged, path)
	}
	size := fst.Size
	t.str("(")
	t.str("type")
	t.str("regular")
	if fst.Mode&unix.S_IXUSR != 0 {
		t.str("executable")
		t.str("")
	}
	t.str("contents")
	t.u64(uint64(size))
	if t.err != nil {
		return t.err
	}
	var n int64
	if size > writeBufSize {
		// Empty the buffer so the copy reaches the destination's ReadFrom.
		if err := t.w.Flush(); err != nil {
			t.err = err
			return err
		}
		n, err = t.w.ReadFrom(io.LimitReader(f, size))
	} else {
		n, err = io.Copy(t.w, io.LimitReader(f, size))
	}
	if err != nil {
		t.err = err
		return err
	}
	if n != size {
		return fmt.Errorf("nar: %w: %s shrank from %d to %d bytes", ErrChanged, path, size, n)
	}
	// A file that grew would write more than its announced size.
	var end [1]byte
	if k, _ := f.Read(end[:]); k != 0 {
		return fmt.Errorf("nar: %w: %s grew beyond %d bytes", ErrChanged, path, size)
	}
	t.pad(uint64(size))
	t.str(")")
	return t.err
}

func (t *treeWriter) dir(fd int, path string) error {
	// Readdirnames on a duplicate, so closing it leaves fd to the caller.
	dup, err := unix.Dup(fd)
	if err != nil {
		return &os.PathError{Op: "dup", Path: path, Err: err}
	}
	d := os.NewFile(uintptr(dup), path)
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	// Byte order, as Nix's std::map<std::string> of entries.
	slices.Sort(names)
	t.str("(")
	t.str("type")
	t.str("directory")
	for _, name := range names {
		t.str("entry")
		t.str("(")
		t.str("name")
		t.str(name)
		t.str("node")
		if err := t.node(fd, name, path+"/"+name); err != nil {
			return err
		}
		t.str(")")
	}
	t.str(")")
	return t.err
}

// readlinkat reads a link's target; size is the lstat size, a hint.
func readlinkat(dfd int, name string, size int64) (string, error) {
	n := max(int(size)+1, 128)
	for n <= MaxTargetLen+2 {
		buf := make([]byte, n)
		k, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", err
		}
		if k < n {
			return string(buf[:k]), nil
		}
		n *= 2
	}
	return "", fmt.Errorf("symlink target longer than %d bytes", MaxTargetLen)
}
