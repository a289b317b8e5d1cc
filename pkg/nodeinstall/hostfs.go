package nodeinstall

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/cyphar/filepath-securejoin/pathrs-lite/procfs"
	"golang.org/x/sys/unix"
)

// hostFS reaches host paths from the installer's container, where the
// host's / is mounted at root. Every lookup resolves inside root as the
// host's kernel resolves it on the host: an absolute symbolic link
// (NixOS's /etc/containerd/config.toml -> /etc/static/...) starts again
// at root, and `..` stops there, so no link reaches the installer's own
// files or anything outside the host root. The walk is openat2 with
// RESOLVE_IN_ROOT (Linux 5.6 and later) or, on older kernels,
// filepath-securejoin's O_PATH walk that does the same in user space.
//
// filepath.Join(root, p) with os functions would instead follow links in
// the installer's file system: an absolute link reads as absent there, and
// a write through it lands in the container.
//
// Reads follow every link. Writes (writeFile, remove) follow the links of
// the parent directories but never replace or remove a link itself: the
// plan resolves a linked file to its target first (see resolve).
type hostFS struct {
	root string // the host's / here
}

func newHostFS(root string) hostFS {
	if root == "" {
		root = "/"
	}
	return hostFS{root: filepath.Clean(root)}
}

// openRoot opens the host root itself.
func (h hostFS) openRoot() (*os.File, error) {
	return os.OpenFile(h.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// open returns an O_PATH handle of the host path p, every link followed
// inside the root.
func (h hostFS) open(p string) (*os.File, error) {
	root, err := h.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := pathrs.OpenatInRoot(root, p)
	if err != nil {
		return nil, hostPathError("open", p, err)
	}
	return f, nil
}

// hostPathError names the host path (not where it is here) and keeps the
// errno, so errors.Is(err, fs.ErrNotExist) works.
func hostPathError(op, p string, err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		err = errno
	}
	return &fs.PathError{Op: op, Path: p, Err: err}
}

// readFile reads the host file p.
func (h hostFS) readFile(p string) ([]byte, error) {
	f, err := h.open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Before opening it for reading: a FIFO would block.
	fi, err := f.Stat()
	if err != nil {
		return nil, hostPathError("read", p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, hostPathError("read", p, fmt.Errorf("not a regular file (%s)", fi.Mode().Type()))
	}
	rf, err := pathrs.Reopen(f, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, hostPathError("read", p, err)
	}
	defer rf.Close()
	b, err := io.ReadAll(rf)
	if err != nil {
		return nil, hostPathError("read", p, err)
	}
	return b, nil
}

// stat stats the host path p, links followed.
func (h hostFS) stat(p string) (fs.FileInfo, error) {
	f, err := h.open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// exists reports whether the host path p exists (links followed).
func (h hostFS) exists(p string) bool {
	_, err := h.stat(p)
	return err == nil
}

// parent opens the directory of the host path p (links followed) and
// returns it with p's last element.
func (h hostFS) parent(p string) (*os.File, string, error) {
	p = filepath.Clean(p)
	if p == "/" {
		return nil, "", hostPathError("open", p, unix.EINVAL)
	}
	dir, err := h.open(filepath.Dir(p))
	if err != nil {
		return nil, "", err
	}
	return dir, filepath.Base(p), nil
}

// lstat stats the host path p itself: its directory's links followed, p's
// own not.
func (h hostFS) lstat(p string) (unix.Stat_t, error) {
	var st unix.Stat_t
	dir, base, err := h.parent(p)
	if err != nil {
		return st, err
	}
	defer dir.Close()
	if err := unix.Fstatat(int(dir.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, hostPathError("lstat", p, err)
	}
	return st, nil
}

// readlink returns the target of the host symlink p as written.
func (h hostFS) readlink(p string) (string, error) {
	dir, base, err := h.parent(p)
	if err != nil {
		return "", err
	}
	defer dir.Close()
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(int(dir.Fd()), base, buf)
		if err != nil {
			return "", hostPathError("readlink", p, err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// realPath returns the host path of an open handle: where its lookup
// ended, with no link left in it.
func (h hostFS) realPath(f *os.File) (string, error) {
	s, err := procfs.ProcSelfFdReadlink(f)
	if err != nil {
		return "", err
	}
	root, err := filepath.EvalSymlinks(h.root)
	if err != nil {
		return "", err
	}
	switch {
	case root == "/":
		return s, nil
	case s == root:
		return "/", nil
	case strings.HasPrefix(s, root+"/"):
		return s[len(root):], nil
	}
	return "", fmt.Errorf("%s is outside the host root %s", s, root)
}

// danglingLinkError: a link whose target is not on the host. Nothing is
// ever created over it.
type danglingLinkError struct {
	path, target string
}

func (e *danglingLinkError) Error() string {
	return fmt.Sprintf("%s is a symbolic link to %s, which does not exist on the host (resolved inside the host root): "+
		"storepkg does not create a file over a link; create its target, or remove the link, and run again", e.path, e.target)
}

// resolve returns where the host path p really is: its real host path,
// every link resolved inside the root, for p itself when it is a link.
// link is p's own target as written, "" when p is not a link. A missing p
// resolves through its deepest existing ancestor (a new file is created
// where the host would create it); a link, or a link to a directory on
// the way, whose target does not exist is a *danglingLinkError.
func (h hostFS) resolve(p string) (real, link string, err error) {
	p = filepath.Clean(p)
	if p == "/" {
		return "/", "", nil
	}
	st, err := h.lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dir, _, err := h.resolve(filepath.Dir(p))
		if err != nil {
			return "", "", err
		}
		return filepath.Join(dir, filepath.Base(p)), "", nil
	case err != nil:
		return "", "", err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if link, err = h.readlink(p); err != nil {
			return "", "", err
		}
	}
	f, err := h.open(p)
	if err != nil {
		if link != "" && errors.Is(err, fs.ErrNotExist) {
			return "", "", &danglingLinkError{path: p, target: link}
		}
		if link != "" {
			return "", "", fmt.Errorf("%s is a symbolic link to %s: %w", p, link, err)
		}
		return "", "", err
	}
	defer f.Close()
	real, err = h.realPath(f)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", p, err)
	}
	return real, link, nil
}

// readOnly says why the host cannot be written at the real host path p
// ("" when it can): the Nix store, or a file system mounted read-only.
func (h hostFS) readOnly(p string) string {
	if p == nixStore || strings.HasPrefix(p, nixStore+"/") {
		return "it is in the Nix store, which only Nix writes"
	}
	for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
		f, err := h.open(dir)
		if err != nil {
			if dir == "/" {
				return ""
			}
			continue
		}
		var st unix.Statfs_t
		err = unix.Fstatfs(int(f.Fd()), &st)
		f.Close()
		if err == nil && st.Flags&unix.ST_RDONLY != 0 {
			return "its file system is mounted read-only"
		}
		return ""
	}
}

const nixStore = "/nix/store"

// readDirNames lists the host directory p (links followed), sorted.
func (h hostFS) readDirNames(p string) ([]string, error) {
	f, err := h.open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, err := pathrs.Reopen(f, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return nil, hostPathError("open", p, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, hostPathError("readdir", p, err)
	}
	slices.Sort(names)
	return names, nil
}

// glob is filepath.Glob on the host: the matches are host paths as the
// pattern spells them (links in them not resolved), sorted per directory,
// unreadable directories skipped.
func (h hostFS) glob(pattern string) ([]string, error) {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, err
	}
	pattern = filepath.Clean(pattern)
	if !hasMeta(pattern) {
		if _, err := h.lstat(pattern); err != nil {
			return nil, nil
		}
		return []string{pattern}, nil
	}
	dir, file := filepath.Split(pattern)
	dir = filepath.Clean(dir)
	dirs := []string{dir}
	if hasMeta(dir) {
		var err error
		if dirs, err = h.glob(dir); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, d := range dirs {
		names, err := h.readDirNames(d)
		if err != nil {
			continue
		}
		for _, n := range names {
			if ok, _ := filepath.Match(file, n); ok {
				out = append(out, filepath.Join(d, n))
			}
		}
	}
	return out, nil
}

func hasMeta(p string) bool { return strings.ContainsAny(p, `*?[\`) }

// writeFile writes data to the host path p atomically: a temporary file
// in p's directory (created, with its parents, inside the root), synced,
// renamed over p. A file it replaces keeps its mode. p itself must not be
// a link: the plan writes to a link's target, never over the link.
func (h hostFS) writeFile(p string, data []byte, mode fs.FileMode) error {
	root, err := h.openRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	p = filepath.Clean(p)
	dir, err := pathrs.MkdirAllHandle(root, filepath.Dir(p), 0o755)
	if err != nil {
		return hostPathError("mkdir", filepath.Dir(p), err)
	}
	defer dir.Close()
	dfd, base := int(dir.Fd()), filepath.Base(p)
	var st unix.Stat_t
	switch err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG:
		mode = fs.FileMode(st.Mode & 0o777)
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return hostPathError("write", p, errors.New("is a symbolic link now; storepkg does not replace links"))
	case err == nil:
		return hostPathError("write", p, errors.New("not a regular file"))
	case !errors.Is(err, unix.ENOENT):
		return hostPathError("lstat", p, err)
	case mode == 0:
		mode = 0o644
	}
	var tmp string
	var f *os.File
	for range 100 {
		tmp = "." + base + ".storepkg-" + strconv.FormatUint(uint64(rand.Uint32()), 10)
		fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return hostPathError("create", filepath.Join(filepath.Dir(p), tmp), err)
		}
		f = os.NewFile(uintptr(fd), filepath.Join(filepath.Dir(p), tmp))
		break
	}
	if f == nil {
		return hostPathError("create", p, unix.EEXIST)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := unix.Renameat(dfd, tmp, dfd, base); err != nil {
		return hostPathError("rename", p, err)
	}
	renamed = true
	if d, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		_ = unix.Fsync(d)
		unix.Close(d)
	}
	return nil
}

// remove removes the host file p; a missing one is not an error, a link
// is (the plan removes a link's target, never the link).
func (h hostFS) remove(p string) error {
	return h.inParent(p, func(dir int, base string) error {
		var st unix.Stat_t
		switch err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
		case errors.Is(err, unix.ENOENT):
			return nil
		case err != nil:
			return hostPathError("lstat", p, err)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return hostPathError("remove", p, errors.New("is a symbolic link now; storepkg does not remove links"))
		}
		if err := unix.Unlinkat(dir, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return hostPathError("remove", p, err)
		}
		return nil
	})
}

// removeDir removes the host directory p if it is empty; one that is not
// (or is not a directory, a link included) stays and is not an error.
func (h hostFS) removeDir(p string) error {
	return h.inParent(p, func(dir int, base string) error {
		err := unix.Unlinkat(dir, base, unix.AT_REMOVEDIR)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOTDIR):
			return nil
		}
		return hostPathError("rmdir", p, err)
	})
}

// inParent runs fn on the directory of the host path p, opened in the
// root, and p's last element; when the directory is missing, so is p, and
// there is nothing to do.
func (h hostFS) inParent(p string, fn func(dir int, base string) error) error {
	dir, base, err := h.parent(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer dir.Close()
	return fn(int(dir.Fd()), base)
}

// localPath returns where the host path p is in this file system, its
// links resolved inside the root: for what is not opened here but named
// to someone else (containerd's socket, for gRPC to connect to). A path
// that does not resolve is joined to the root as it is.
func (h hostFS) localPath(p string) string {
	real, _, err := h.resolve(p)
	if err != nil {
		return filepath.Join(h.root, p)
	}
	root, err := filepath.EvalSymlinks(h.root)
	if err != nil {
		root = h.root
	}
	return filepath.Join(root, real)
}
