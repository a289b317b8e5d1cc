// Package nar reads and writes Nix ARchives, the serialisation Nix hashes
// and ships store paths in.
//
// The reader is strict: it accepts only the canonical encoding Nix's own
// writer produces, so a NAR that passed it unpacks to exactly one tree and
// nothing in it can escape the destination directory.
package nar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

const (
	magic = "nix-archive-1"

	// MaxNameLen is the longest directory entry name accepted (Linux NAME_MAX).
	MaxNameLen = 255
	// MaxTargetLen is the longest symlink target accepted (PATH_MAX - 1).
	MaxTargetLen = 4095
	// MaxDepth bounds directory nesting; real store paths stay far below it.
	MaxDepth = 256
	// maxTokenLen bounds the syntax tokens ("type", "directory", …).
	maxTokenLen = 16
)

// ErrFormat is wrapped by every error about malformed NAR input.
var ErrFormat = errors.New("malformed NAR")

// Sink receives the tree a NAR describes, in stream order. Paths are
// relative to the root and use '/' ("" is the root itself).
type Sink interface {
	Directory(path string) error
	// DirectoryDone is called after the last entry of path.
	DirectoryDone(path string) error
	// File must consume exactly size bytes from contents before returning.
	File(path string, executable bool, size int64, contents io.Reader) error
	Symlink(path, target string) error
}

// Parse reads one NAR from r, feeding sink, and fails on any deviation
// from the canonical encoding, including data after the archive's end.
// It reads r in large chunks (r is consumed to its end anyway); the
// contents reader handed to Sink.File implements io.WriterTo, writing
// straight out of the parser's buffer.
func Parse(r io.Reader, sink Sink) error {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	p := &parser{in: reader{src: r, buf: *buf}, sink: sink}
	if err := p.expect(magic); err != nil {
		return err
	}
	if err := p.node("", 0); err != nil {
		return err
	}
	switch err := p.in.fill(); {
	case p.in.buffered() > 0:
		return fmt.Errorf("%w: trailing data after the archive at offset %d", ErrFormat, p.in.off)
	case err != nil && err != io.EOF:
		return err
	}
	return nil
}

// readBufSize is the parser's buffer: large enough that reading a pipe
// or a decompressor takes few calls, small enough to stay in a core's
// cache while the data is hashed and written out.
const readBufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// reader buffers the archive stream. Every byte is copied once, from the
// source into buf; tokens are parsed and file contents written from there.
type reader struct {
	src  io.Reader
	buf  []byte
	r, w int   // buf[r:w] is read but not yet consumed
	err  error // the source's error, returned once buf is drained
	off  int64 // bytes consumed
}

func (b *reader) buffered() int { return b.w - b.r }

// fill moves the unconsumed bytes (never more than a token's) to the
// start of buf and reads from the source into the rest. It returns nil
// if bytes arrived, else the source's error.
func (b *reader) fill() error {
	if b.err != nil {
		return b.err
	}
	if b.r > 0 {
		// Called with at most a token's bytes left: cheap to move.
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	for range 100 {
		n, err := b.src.Read(b.buf[b.w:])
		if n < 0 || n > len(b.buf)-b.w {
			panic("nar: reader returned an invalid count")
		}
		b.w += n
		if err != nil {
			b.err = err
		}
		if n > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
	b.err = io.ErrNoProgress
	return b.err
}

// next consumes and returns the next n bytes (n <= MaxTargetLen+1),
// valid until the next call.
func (b *reader) next(n int) ([]byte, error) {
	for b.buffered() < n {
		if err := b.fill(); err != nil {
			return nil, err
		}
	}
	s := b.buf[b.r : b.r+n]
	b.r += n
	b.off += int64(n)
	return s, nil
}

type parser struct {
	in   reader
	sink Sink
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w at offset %d: %s", ErrFormat, p.in.off, fmt.Sprintf(format, args...))
}

func (p *parser) next(n int) ([]byte, error) {
	b, err := p.in.next(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		// What is left is too short; consume it for the offset.
		p.in.off += int64(p.in.buffered())
		p.in.r = p.in.w
		return nil, p.errorf("unexpected end of archive")
	}
	return b, err
}

func (p *parser) readUint64() (uint64, error) {
	b, err := p.next(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (p *parser) readPadding(n uint64) error {
	pad := (8 - n%8) % 8
	if pad == 0 {
		return nil
	}
	b, err := p.next(int(pad))
	if err != nil {
		return err
	}
	for _, c := range b {
		if c != 0 {
			return p.errorf("non-zero padding")
		}
	}
	return nil
}

// readBytes reads a length-prefixed, zero-padded string of at most max
// bytes (max <= MaxTargetLen), valid until the next read.
func (p *parser) readBytes(max int, what string) ([]byte, error) {
	n, err := p.readUint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, p.errorf("%s of %d bytes exceeds the limit of %d", what, n, max)
	}
	// The string and its padding in one piece.
	padded := (n + 7) &^ 7
	b, err := p.next(int(padded))
	if err != nil {
		return nil, err
	}
	for _, c := range b[n:] {
		if c != 0 {
			return nil, p.errorf("non-zero padding")
		}
	}
	return b[:n], nil
}

// readString is readBytes as a string.
func (p *parser) readString(max int, what string) (string, error) {
	b, err := p.readBytes(max, what)
	return string(b), err
}

// token reads a syntax token; the bytes are valid until the next read.
func (p *parser) token() ([]byte, error) { return p.readBytes(maxTokenLen, "token") }

func (p *parser) expect(want string) error {
	got, err := p.readBytes(max(len(want), maxTokenLen), "token")
	if err != nil {
		return err
	}
	if string(got) != want {
		return p.errorf("expected %q, got %q", want, got)
	}
	return nil
}

func (p *parser) node(path string, depth int) error {
	if depth > MaxDepth {
		return p.errorf("directories nested deeper than %d", MaxDepth)
	}
	if err := p.expect("("); err != nil {
		return err
	}
	if err := p.expect("type"); err != nil {
		return err
	}
	typ, err := p.token()
	if err != nil {
		return err
	}
	switch string(typ) {
	case "regular":
		return p.regular(path)
	case "symlink":
		return p.symlink(path)
	case "directory":
		return p.directory(path, depth)
	default:
		return p.errorf("unknown node type %q", typ)
	}
}

func (p *parser) regular(path string) error {
	tok, err := p.token()
	if err != nil {
		return err
	}
	executable := false
	if string(tok) == "executable" {
		if err := p.expect(""); err != nil {
			return err
		}
		executable = true
		if tok, err = p.token(); err != nil {
			return err
		}
	}
	if string(tok) != "contents" {
		return p.errorf("expected \"contents\", got %q", tok)
	}
	size, err := p.readUint64()
	if err != nil {
		return err
	}
	if size > 1<<62 {
		return p.errorf("file size %d is absurd", size)
	}
	contents := &contentsReader{p: p, n: int64(size)}
	if err := p.sink.File(path, executable, int64(size), contents); err != nil {
		return err
	}
	if contents.n != 0 {
		// The sink stopped early; drain so the stream stays in sync.
		if _, err := io.Copy(io.Discard, contents); err != nil {
			return err
		}
		if contents.n != 0 {
			return p.errorf("unexpected end of archive in file contents")
		}
	}
	if err := p.readPadding(size); err != nil {
		return err
	}
	return p.expect(")")
}

func (p *parser) symlink(path string) error {
	if err := p.expect("target"); err != nil {
		return err
	}
	target, err := p.readString(MaxTargetLen, "symlink target")
	if err != nil {
		return err
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return p.errorf("invalid symlink target %q", target)
	}
	if err := p.sink.Symlink(path, target); err != nil {
		return err
	}
	return p.expect(")")
}

func (p *parser) directory(path string, depth int) error {
	if err := p.sink.Directory(path); err != nil {
		return err
	}
	prev := ""
	for first := true; ; first = false {
		tok, err := p.token()
		if err != nil {
			return err
		}
		if string(tok) == ")" {
			return p.sink.DirectoryDone(path)
		}
		if string(tok) != "entry" {
			return p.errorf("expected \"entry\" or \")\", got %q", tok)
		}
		if err := p.expect("("); err != nil {
			return err
		}
		if err := p.expect("name"); err != nil {
			return err
		}
		name, err := p.readString(MaxNameLen, "entry name")
		if err != nil {
			return err
		}
		if err := checkName(name); err != nil {
			return p.errorf("entry %q in %q: %v", name, "/"+path, err)
		}
		// Byte-wise order, as Nix's writer emits (std::map<std::string>).
		if !first && name <= prev {
			if name == prev {
				return p.errorf("duplicate entry %q in %q", name, "/"+path)
			}
			return p.errorf("entry %q after %q in %q: entries not sorted", name, prev, "/"+path)
		}
		prev = name
		if err := p.expect("node"); err != nil {
			return err
		}
		child := name
		if path != "" {
			child = path + "/" + name
		}
		if err := p.node(child, depth+1); err != nil {
			return err
		}
		if err := p.expect(")"); err != nil {
			return err
		}
	}
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name == "." || name == "..":
		return errors.New("reserved name")
	case strings.IndexByte(name, '/') >= 0:
		return errors.New("name contains '/'")
	case strings.IndexByte(name, 0) >= 0:
		return errors.New("name contains NUL")
	}
	return nil
}

// contentsReader hands a file's contents to the sink and keeps the
// parser's offset right.
type contentsReader struct {
	p *parser
	n int64
}

// more makes sure some of the contents are buffered.
func (c *contentsReader) more() error {
	in := &c.p.in
	if in.buffered() > 0 {
		return nil
	}
	err := in.fill()
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return c.p.errorf("unexpected end of archive in file contents")
	}
	return err
}

// chunk consumes up to max buffered bytes of the contents.
func (c *contentsReader) chunk(max int) []byte {
	in := &c.p.in
	k := min(int64(in.buffered()), c.n, int64(max))
	b := in.buf[in.r : in.r+int(k)]
	in.r += int(k)
	in.off += k
	c.n -= k
	return b
}

func (c *contentsReader) Read(b []byte) (int, error) {
	if c.n <= 0 {
		return 0, io.EOF
	}
	if err := c.more(); err != nil {
		return 0, err
	}
	return copy(b, c.chunk(len(b))), nil
}

// WriteTo writes the rest of the contents to w straight from the
// parser's buffer, in chunks as large as the buffer.
func (c *contentsReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for c.n > 0 {
		if err := c.more(); err != nil {
			return total, err
		}
		b := c.chunk(len(c.p.in.buf))
		n, err := w.Write(b)
		total += int64(n)
		if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
