// Package mount builds what a container sees of the node store: a small
// generated root directory and the mount that exposes exactly one closure,
// read-only: the closure's store view, a directory shared by every
// container on the node that runs the same closure (pkg/store/views
// builds and prunes them), or, where views cannot be made, one bind per
// closure path.
package mount

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// storeMountOptions: nothing in the store is setuid or a device, and no
// container may change it.
var storeMountOptions = []string{"rbind", "ro", "nosuid", "nodev"}

// skeletonDirs exist in every view; runc and the CRI mount over several.
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

// BuildShared creates the skeleton in rootfs (an empty or missing
// directory) and returns the one mount to append to the OCI spec: the
// closure's store view (views.Acquire's View.StoreDir) bound read-only,
// nosuid, nodev at /nix/store. One mount whatever the closure's size.
// Mount points for the spec's existing mounts are created as Build does.
func BuildShared(rootfs, viewStore string, specMounts []specs.Mount) ([]specs.Mount, error) {
	if err := skeleton(rootfs, specMounts); err != nil {
		return nil, err
	}
	return []specs.Mount{{
		Destination: storepath.StoreDir, Type: "bind", Source: viewStore, Options: storeMountOptions,
	}}, nil
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

// skeleton creates the generated root: its directories, identity files
// and the mount points of specMounts.
func skeleton(rootfs string, specMounts []specs.Mount) error {
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return fmt.Errorf("view: %w", err)
	}
	for _, d := range skeletonDirs {
		p := filepath.Join(rootfs, d.path)
		if err := os.Mkdir(p, d.mode); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("view: %w", err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return fmt.Errorf("view: %w", err)
		}
	}
	for name, content := range skeletonFiles {
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("view: %w", err)
		}
	}
	for _, m := range specMounts {
		if err := mountPoint(rootfs, m); err != nil {
			return err
		}
	}
	return nil
}

// Build creates the skeleton in rootfs (an empty or missing directory)
// and returns the mounts to append to the OCI spec: one read-only bind per
// closure path from hostStore (<StoreRoot>/nix/store). A store path that
// is itself a symlink becomes the same symlink in the view, since binding
// it would follow the link on the host. Mount points for the spec's
// existing mounts (CRI's hosts, resolv.conf, volumes…) are created with
// the right kind (file or directory). Its cost grows with the closure
// (runc mounts each path); BuildShared is the fast way, Build the
// fallback where store views cannot be made (views.ErrUnsupported).
func Build(rootfs, hostStore string, closure []storepath.Path, specMounts []specs.Mount) ([]specs.Mount, error) {
	if err := skeleton(rootfs, specMounts); err != nil {
		return nil, err
	}
	viewStore := filepath.Join(rootfs, "nix", "store")
	// The view's /nix/store itself is a read-only bind of the skeleton
	// directory, so nothing can be added beside the closure; the closure
	// paths are mounted over the mount points prepared in it.
	mounts := make([]specs.Mount, 0, len(closure)+1)
	mounts = append(mounts, specs.Mount{
		Destination: storepath.StoreDir, Type: "bind", Source: viewStore,
		Options: []string{"bind", "ro", "nosuid", "nodev"},
	})
	for _, p := range closure {
		src := filepath.Join(hostStore, p.Base())
		dst := filepath.Join(viewStore, p.Base())
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

// mountPoint creates the destination of m in the skeleton: a file when a
// bind mount's source is a file, a directory otherwise.
func mountPoint(rootfs string, m specs.Mount) error {
	dst := path.Clean("/" + m.Destination)
	if dst == "/" || strings.HasPrefix(dst, storepath.StoreDir+"/") || dst == storepath.StoreDir {
		return nil
	}
	full := filepath.Join(rootfs, dst)
	isFile := false
	if m.Type == "bind" || hasOption(m.Options, "bind") || hasOption(m.Options, "rbind") {
		if fi, err := os.Stat(m.Source); err == nil && !fi.IsDir() {
			isFile = true
		}
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return fmt.Errorf("view: mount point %s: %w", dst, err)
	}
	var err error
	if isFile {
		err = touch(full)
	} else {
		err = os.Mkdir(full, 0o755)
	}
	if err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("view: mount point %s: %w", dst, err)
	}
	return nil
}

func touch(p string) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		return err
	}
	return f.Close()
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
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

// Remove deletes a view's skeleton once its container is gone. The
// closure mounts lived in the container's mount namespace, so nothing
// should be mounted under rootfs on the host; if something is, Remove
// refuses rather than delete through a mount into the store.
func Remove(rootfs string) error {
	mounted, err := MountsUnder(rootfs)
	if err != nil {
		return err
	}
	if len(mounted) > 0 {
		return fmt.Errorf("view: %s still has %d mounts (first %s); not removing", rootfs, len(mounted), mounted[0])
	}
	if err := os.RemoveAll(rootfs); err != nil {
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
