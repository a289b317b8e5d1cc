package nar

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// Dump writes the NAR serialisation of the tree at path to w, as
// `nix-store --dump` does: entries in byte order, only the executable bit
// of a file's mode kept.
func Dump(w io.Writer, path string) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	d := &dumper{w: bw}
	d.str(magic)
	if err := d.node(path); err != nil {
		return err
	}
	if d.err != nil {
		return d.err
	}
	return bw.Flush()
}

type dumper struct {
	w   *bufio.Writer
	err error
}

func (d *dumper) u64(n uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	if d.err == nil {
		_, d.err = d.w.Write(b[:])
	}
}

func (d *dumper) pad(n uint64) {
	var zero [8]byte
	if p := (8 - n%8) % 8; p != 0 && d.err == nil {
		_, d.err = d.w.Write(zero[:p])
	}
}

func (d *dumper) str(s string) {
	d.u64(uint64(len(s)))
	if d.err == nil {
		_, d.err = d.w.WriteString(s)
	}
	d.pad(uint64(len(s)))
}

func (d *dumper) node(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	d.str("(")
	d.str("type")
	switch {
	case fi.Mode().IsRegular():
		d.str("regular")
		if fi.Mode()&0o100 != 0 {
			d.str("executable")
			d.str("")
		}
		d.str("contents")
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		d.u64(uint64(fi.Size()))
		if d.err == nil {
			n, err := io.Copy(d.w, f)
			if err != nil {
				return err
			}
			if n != fi.Size() {
				return fmt.Errorf("nar: %s changed size while being dumped", path)
			}
		}
		d.pad(uint64(fi.Size()))
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		d.str("symlink")
		d.str("target")
		d.str(target)
	case fi.IsDir():
		d.str("directory")
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		names := make([]string, len(entries))
		for i, e := range entries {
			names[i] = e.Name()
		}
		sort.Strings(names)
		for _, name := range names {
			d.str("entry")
			d.str("(")
			d.str("name")
			d.str(name)
			d.str("node")
			if err := d.node(filepath.Join(path, name)); err != nil {
				return err
			}
			d.str(")")
		}
	default:
		return fmt.Errorf("nar: %s: unsupported file type %s", path, fi.Mode().Type())
	}
	d.str(")")
	return d.err
}
