package nar

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Unpack parses a NAR from r and creates its tree at dst, which must not
// exist. The tree is written already canonicalised the way Nix leaves a
// store path: files 0444 (0555 if executable), directories 0555, and every
// mtime 1, so no second pass over the tree is needed. On error the caller
// removes dst.
func Unpack(r io.Reader, dst string) error {
	return Parse(r, &fsSink{root: dst})
}

type fsSink struct {
	root string
}

// canonicalTime is Nix's store mtime (1 second after the epoch); atime is
// left alone, as Nix does.
var canonicalTime = []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 1}}

func (s *fsSink) full(path string) string {
	if path == "" {
		return s.root
	}
	return filepath.Join(s.root, path)
}

func (s *fsSink) Directory(path string) error {
	if err := os.Mkdir(s.full(path), 0o755); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	return nil
}

func (s *fsSink) DirectoryDone(path string) error {
	p := s.full(path)
	if err := os.Chmod(p, 0o555); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	return setTimes(p, 0)
}

func (s *fsSink) File(path string, executable bool, size int64, contents io.Reader) error {
	p := s.full(path)
	mode := os.FileMode(0o444)
	if executable {
		mode = 0o555
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	// contents is the parser's reader: WriteTo writes from its buffer.
	if _, err := io.Copy(f, contents); err != nil {
		f.Close()
		return fmt.Errorf("unpack %s: %w", p, err)
	}
	if err := unix.UtimesNanoAt(int(f.Fd()), "", canonicalTime, unix.AT_EMPTY_PATH); err != nil {
		// Fall back to the path on kernels without AT_EMPTY_PATH for utimensat.
		if err := setTimes(p, 0); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("unpack %s: %w", p, err)
	}
	return nil
}

func (s *fsSink) Symlink(path, target string) error {
	p := s.full(path)
	if err := os.Symlink(target, p); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	return setTimes(p, unix.AT_SYMLINK_NOFOLLOW)
}

func setTimes(path string, flags int) error {
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, canonicalTime, flags); err != nil {
		return fmt.Errorf("unpack: set mtime of %s: %w", path, err)
	}
	return nil
}
