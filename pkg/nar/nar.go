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
func Parse(r io.Reader, sink Sink) error {
	p := &parser{r: r, sink: sink}
	if err := p.expect(magic); err != nil {
		return err
	}
	if err := p.node("", 0); err != nil {
		return err
	}
	var one [1]byte
	switch n, err := io.ReadFull(r, one[:]); {
	case n > 0:
		return fmt.Errorf("%w: trailing data after the archive at offset %d", ErrFormat, p.off)
	case err != nil && err != io.EOF:
		return err
	}
	return nil
}

type parser struct {
	r    io.Reader
	sink Sink
	off  int64
	buf  [8]byte
	sbuf []byte
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w at offset %d: %s", ErrFormat, p.off, fmt.Sprintf(format, args...))
}

func (p *parser) readFull(b []byte) error {
	n, err := io.ReadFull(p.r, b)
	p.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return p.errorf("unexpected end of archive")
	}
	return err
}

func (p *parser) readUint64() (uint64, error) {
	if err := p.readFull(p.buf[:8]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p.buf[:8]), nil
}

func (p *parser) readPadding(n uint64) error {
	pad := (8 - n%8) % 8
	if pad == 0 {
		return nil
	}
	if err := p.readFull(p.buf[:pad]); err != nil {
		return err
	}
	for _, b := range p.buf[:pad] {
		if b != 0 {
			return p.errorf("non-zero padding")
		}
	}
	return nil
}

// readString reads a length-prefixed, zero-padded string of at most max bytes.
func (p *parser) readString(max int, what string) (string, error) {
	n, err := p.readUint64()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", p.errorf("%s of %d bytes exceeds the limit of %d", what, n, max)
	}
	if cap(p.sbuf) < int(n) {
		p.sbuf = make([]byte, n)
	}
	b := p.sbuf[:n]
	if err := p.readFull(b); err != nil {
		return "", err
	}
	if err := p.readPadding(n); err != nil {
		return "", err
	}
	return string(b), nil
}

func (p *parser) token() (string, error) { return p.readString(maxTokenLen, "token") }

func (p *parser) expect(want string) error {
	got, err := p.readString(max(len(want), maxTokenLen), "token")
	if err != nil {
		return err
	}
	if got != want {
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
	switch typ {
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
	if tok == "executable" {
		if err := p.expect(""); err != nil {
			return err
		}
		executable = true
		if tok, err = p.token(); err != nil {
			return err
		}
	}
	if tok != "contents" {
		return p.errorf("expected \"contents\", got %q", tok)
	}
	size, err := p.readUint64()
	if err != nil {
		return err
	}
	if size > 1<<62 {
		return p.errorf("file size %d is absurd", size)
	}
	contents := &countingLimitReader{p: p, n: int64(size)}
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
		if tok == ")" {
			return p.sink.DirectoryDone(path)
		}
		if tok != "entry" {
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

// countingLimitReader hands a file's contents to the sink and keeps the
// parser's offset right.
type countingLimitReader struct {
	p *parser
	n int64
}

func (c *countingLimitReader) Read(b []byte) (int, error) {
	if c.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > c.n {
		b = b[:c.n]
	}
	n, err := c.p.r.Read(b)
	c.n -= int64(n)
	c.p.off += int64(n)
	if err == io.EOF && c.n > 0 {
		err = c.p.errorf("unexpected end of archive in file contents")
	}
	return n, err
}
