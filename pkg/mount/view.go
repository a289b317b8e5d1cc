// Package mount builds what a container sees of the node store: the
// skeleton storepkg needs in the container's root (built into the
// container's own snapshot, so its writes stay in its writable layer)
// and the mount that exposes exactly one closure, read-only: the
// closure's store view, a directory shared by every container on the
// node that runs the same closure (pkg/store/views builds and prunes
// them), or, where views cannot be made, one bind per closure path.
package mount

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// storeMountOptions: nothing in the store is setuid or a device, and no
// container may change it.
var storeMountOptions = []string{"rbind", "ro", "nosuid", "nodev"}

// skeletonDirs exist in every container's root, parents first; runc and
// the CRI mount over several.
var skeletonDirs = []struct {
	path string
	mode os.FileMode
}{
	{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"etc", 0o755}, {"run", 0o755},
	{"tmp", os.ModeSticky | 0o777}, {"var", 0o755}, {"var/tmp", os.ModeSticky | 0o777}, {"root", 0o700}, {"nix", 0o755},
	{"nix/store", 0o755},
}

// Minimal identity files, so programs that look up root or nobody work.
var skeletonFiles = map[string]string{
	"etc/passwd": "root:x:0:0:root:/root:/noshell\nnobody:x:65534:65534:nobody:/var/empty:/noshell\n",
	"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
}

// Skeleton builds storepkg's skeleton in root, the container's root
// file system (its snapshot of the placeholder image, mounted): the
// directories above with their modes (/tmp and /var/tmp 1777, the
// /nix/store mount point) and the identity files, which replace the
// image's. What the image holds is under the container's control, so
// every path is resolved inside root (openat2 RESOLVE_IN_ROOT, or
// filepath-securejoin's equivalent): a symbolic link in the image never
// leads a write of this process, root on the node, out of root. Mount
// points of the spec's mounts are left to runc, which creates them the
// same way.
func Skeleton(root string) error {
	rootDir, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("view: container root: %w", err)
	}
	defer rootDir.Close()
	for _, d := range skeletonDirs {
		if err := skeletonDir(rootDir, d.path, d.mode); err != nil {
			return fmt.Errorf("view: skeleton directory /%s in %s: %w", d.path, root, err)
		}
	}
	names := make([]string, 0, len(skeletonFiles))
	for name := range skeletonFiles {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := skeletonFile(rootDir, name, skeletonFiles[name]); err != nil {
			return fmt.Errorf("view: skeleton file /%s in %s: %w", name, root, err)
		}
	}
	return nil
}

// skeletonDir creates the directory p inside root, or finds it (links
// followed inside root), and gives it mode.
func skeletonDir(root *os.File, p string, mode os.FileMode) error {
	h, err := pathrs.MkdirAllHandle(root, p, mode)
	if err != nil {
		return err
	}
	defer h.Close()
	fi, err := h.Stat()
	if err != nil {
		return err
	}
	if fi.Mode()&(os.ModePerm|os.ModeSticky) == mode {
		return nil // left alone: a chmod would copy the image's directory up
	}
	d, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Chmod(mode)
}

// skeletonFile writes content to the file p inside root: a new file in
// p's directory, renamed over whatever p is (a link in the image is
// replaced, never followed).
func skeletonFile(root *os.File, p, content string) error {
	dir, err := pathrs.MkdirAllHandle(root, filepath.Dir(p), 0o755)
	if err != nil {
		return err
	}
	defer dir.Close()
	dfd, base := int(dir.Fd()), filepath.Base(p)
	tmp := "." + base + ".storepkg"
	_ = unix.Unlinkat(dfd, tmp, 0) // left by an interrupted create of this container
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, base)
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
	}
	return err
}

// BuildShared returns the one mount to append to the OCI spec: the
// closure's store view (views.Acquire's View.StoreDir) bound read-only,
// nosuid, nodev at /nix/store. One mount whatever the closure's size.
func BuildShared(viewStore string) []specs.Mount {
	return []specs.Mount{{
		Destination: storepath.StoreDir, Type: "bind", Source: viewStore, Options: storeMountOptions,
	}}
}

// BindStorePaths returns the mounts to append after BuildShared's for a
// view's bound paths (views.View.Bound, base names): each store path
// under hostStore (<StoreRoot>/nix/store) bound read-only, nosuid, nodev
// over its empty directory in the view. They live in the container's
// mount namespace only, and go with it.
func BindStorePaths(hostStore string, bound []string) []specs.Mount {
	mounts := make([]specs.Mount, 0, len(bound))
	for _, name := range bound {
		mounts = append(mounts, specs.Mount{
			Destination: path.Join(storepath.StoreDir, name), Type: "bind",
			Source: filepath.Join(hostStore, name), Options: storeMountOptions,
		})
	}
	return mounts
}

// Build creates storeDir, a new directory outside the container's root
// (it holds only read-only mount points), and returns the mounts to
// append to the OCI spec: storeDir bound read-only at /nix/store, so
// nothing can be added beside the closure, then one read-only bind per
// closure path from hostStore (<StoreRoot>/nix/store) over its mount
// point in storeDir. A store path that is itself a symlink becomes the
// same symlink in storeDir, since binding it would follow the link on
// the host. Its cost grows with the closure (runc mounts each path);
// BuildShared is the fast way, Build the fallback where store views
// cannot be made (views.ErrUnsupported).
func Build(storeDir, hostStore string, closure []storepath.Path) ([]specs.Mount, error) {
	if err := os.Mkdir(storeDir, 0o755); err != nil {
		return nil, fmt.Errorf("view: %w", err)
	}
	mounts := make([]specs.Mount, 0, len(closure)+1)
	mounts = append(mounts, specs.Mount{
		Destination: storepath.StoreDir, Type: "bind", Source: storeDir,
		Options: []string{"bind", "ro", "nosuid", "nodev"},
	})
	for _, p := range closure {
		src := filepath.Join(hostStore, p.Base())
		dst := filepath.Join(storeDir, p.Base())
		fi, err := os.Lstat(src)
		if err != nil {
			return nil, fmt.Errorf("view: closure path %s: %w", p, err)
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(src)
			if err != nil {
				return nil, fmt.Errorf("view: %w", err)
			}
			if err := os.Symlink(target, dst); err != nil {
				return nil, fmt.Errorf("view: %w", err)
			}
			continue
		case fi.IsDir():
			err = os.Mkdir(dst, 0o555)
		default:
			err = touch(dst)
		}
		if err != nil {
			return nil, fmt.Errorf("view: mount point for %s: %w", p, err)
		}
		mounts = append(mounts, specs.Mount{
			Destination: p.Absolute(), Type: "bind", Source: src, Options: storeMountOptions,
		})
	}
	return mounts, nil
}

func touch(p string) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		return err
	}
	return f.Close()
}

// PathEnv returns the PATH entries for roots: each root's bin directory
// that exists, in the order given.
func PathEnv(hostStore string, roots []storepath.Path) string {
	var dirs []string
	for _, p := range roots {
		if fi, err := os.Stat(filepath.Join(hostStore, p.Base(), "bin")); err == nil && fi.IsDir() {
			dirs = append(dirs, p.Absolute()+"/bin")
		}
	}
	return strings.Join(dirs, ":")
}

// Remove deletes a directory tree of a container that is gone, such as
// the skeleton earlier versions of storepkg built in a bundle's rootfs
// directory (on the node's /run). Nothing should be mounted under dir on the host any more;
// if something is, Remove refuses rather than delete through a mount
// (into the store, or a container's snapshot).
func Remove(dir string) error {
	mounted, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mounted) > 0 {
		return fmt.Errorf("view: %s still has %d mounts (first %s); not removing", dir, len(mounted), mounted[0])
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("view: %w", err)
	}
	return nil
}

// MountsUnder lists the mount points at or below dir in this mount
// namespace, in mountinfo order (a point mounted over twice appears twice).
func MountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("view: %w", err)
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mp := unescapeOctal(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// unescapeOctal undoes mountinfo's \NNN escapes (space, tab, newline, backslash).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
