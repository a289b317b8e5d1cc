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

// File writes through the raw descriptor: an os.File would cost four
// more system calls per file (non-blocking mode on, a refused epoll
// registration, blocking mode again for Fd) and a finalizer.
func (s *fsSink) File(path string, executable bool, size int64, contents io.Reader) error {
	p := s.full(path)
	mode := uint32(0o444)
	if executable {
		mode = 0o555
	}
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, mode)
		return err
	})
	if err != nil {
		return fmt.Errorf("unpack: %w", &os.PathError{Op: "open", Path: p, Err: err})
	}
	// contents is the parser's reader: WriteTo writes from its buffer.
	if _, err := io.Copy(fdWriter{fd: fd, path: p}, contents); err != nil {
		unix.Close(fd)
		return fmt.Errorf("unpack %s: %w", p, err)
	}
	if err := unix.UtimesNanoAt(fd, "", canonicalTime, unix.AT_EMPTY_PATH); err != nil {
		// Fall back to the path on kernels without AT_EMPTY_PATH for utimensat.
		if err := setTimes(p, 0); err != nil {
			unix.Close(fd)
			return err
		}
	}
	// Not retried on EINTR: Linux has closed the descriptor anyway.
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("unpack: %w", &os.PathError{Op: "close", Path: p, Err: err})
	}
	return nil
}

// fdWriter writes all of each buffer to a file descriptor.
type fdWriter struct {
	fd   int
	path string
}

func (w fdWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := unix.Write(w.fd, b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, &os.PathError{Op: "write", Path: w.path, Err: err}
		}
		if k <= 0 {
			return n, io.ErrShortWrite
		}
		n += k
	}
	return n, nil
}

func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
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
