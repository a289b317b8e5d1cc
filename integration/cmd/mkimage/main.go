// Command mkimage writes the container images a kind node needs, as
// one-layer image tarballs built in Go (integration/testimages): nothing is
// pulled and no registry is involved. hack/kind/node-image.sh imports them
// into the node image's containerd; the smoke test loads the busybox one
// with `kind load image-archive`.
//
// Usage:
//
//	mkimage -out DIR [-k8s DIR] [-etcd FILE] [-coredns FILE] [-kindnet FILE] [-rootfs DIR] REF...
//
// Each REF (an image reference, e.g. one line of `kubeadm config images
// list`) is built from what the last element of its repository names:
//
//	kube-apiserver, kube-controller-manager, kube-scheduler
//	                 the static binary of that name from -k8s, in /usr/local/bin
//	kube-proxy       the same, plus iptables (nft) taken from -rootfs
//	etcd             -etcd in /usr/local/bin
//	coredns          -coredns as /coredns
//	kindnet-lite     -kindnet as /bin/kindnet-lite, plus iptables from -rootfs
//	pause            integration/testimages' pause image (REF must be testimages.PauseRef)
//	busybox          integration/testimages' busybox image (REF must be testimages.BusyboxRef)
//
// -rootfs is a Debian root filesystem (the node's): iptables comes with
// the shared libraries it needs, found the way the dynamic loader finds
// them, and the xtables extensions. mkimage writes DIR/<name>.tar for each
// REF and prints one "<tarball> <ref>" line per image.
package main

import (
	"debug/elf"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/storepkg/storepkg/integration/testimages"
)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type options struct {
	out, k8s, etcd, coredns, kindnet, rootfs string
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "", "directory to write the image tarballs to")
	flag.StringVar(&o.k8s, "k8s", "", "directory with the Kubernetes binaries")
	flag.StringVar(&o.etcd, "etcd", "", "the etcd binary")
	flag.StringVar(&o.coredns, "coredns", "", "the coredns binary")
	flag.StringVar(&o.kindnet, "kindnet", "", "the kindnet-lite binary")
	flag.StringVar(&o.rootfs, "rootfs", "", "Debian root filesystem to take iptables from")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: mkimage -out DIR [-k8s DIR] [-etcd FILE] [-coredns FILE] [-kindnet FILE] [-rootfs DIR] REF...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	for _, ref := range flag.Args() {
		tar, err := o.write(ref)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkimage: %s: %v\n", ref, err)
			os.Exit(1)
		}
		fmt.Println(tar, ref)
	}
}

// write builds the image ref names and returns its tarball's path.
func (o *options) write(ref string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	repo := tag.RepositoryStr()
	base := repo[strings.LastIndex(repo, "/")+1:]
	switch base {
	case "pause":
		return writeFixed(ref, testimages.PauseRef, testimages.WritePause, o.out)
	case "busybox":
		return writeFixed(ref, testimages.BusyboxRef, testimages.WriteBusybox, o.out)
	}

	var files []testimages.File
	cfg := v1.Config{Env: []string{defaultPath}, WorkingDir: "/"}
	switch base {
	case "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy":
		bin := "/usr/local/bin/" + base
		files, err = addFile(files, filepath.Join(need(o.k8s, "-k8s"), base), bin)
		cfg.Entrypoint = []string{bin}
		if base == "kube-proxy" && err == nil {
			files, err = addIPTables(files, need(o.rootfs, "-rootfs"))
		}
	case "etcd":
		files, err = addFile(files, need(o.etcd, "-etcd"), "/usr/local/bin/etcd")
		files = append(files, testimages.File{Path: "/var/lib/etcd", Dir: true, Mode: 0o700})
		cfg.Entrypoint = []string{"/usr/local/bin/etcd"}
	case "coredns":
		files, err = addFile(files, need(o.coredns, "-coredns"), "/coredns")
		cfg.Entrypoint = []string{"/coredns"}
		cfg.ExposedPorts = map[string]struct{}{"53/tcp": {}, "53/udp": {}}
	case "kindnet-lite":
		files, err = addFile(files, need(o.kindnet, "-kindnet"), "/bin/kindnet-lite")
		cfg.Entrypoint = []string{"/bin/kindnet-lite"}
		if err == nil {
			files, err = addIPTables(files, need(o.rootfs, "-rootfs"))
		}
	default:
		return "", fmt.Errorf("no recipe for an image named %s", base)
	}
	if err != nil {
		return "", err
	}
	files = append(files,
		testimages.File{Path: "/tmp", Dir: true, Mode: 0o777 | fs.ModeSticky},
		testimages.File{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		testimages.File{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
	)
	tarPath := filepath.Join(o.out, base+".tar")
	return tarPath, testimages.Write(tarPath, ref, files, cfg)
}

// writeFixed writes one of integration/testimages' own images, whose
// reference is fixed: ref must be that reference.
func writeFixed(ref, fixed string, write func(string) (string, string, error), dir string) (string, error) {
	if ref != fixed {
		return "", fmt.Errorf("integration/testimages builds this image as %s only", fixed)
	}
	tar, _, err := write(dir)
	return tar, err
}

// need exits with a usage error when a flag an image needs is empty.
func need(v, flagName string) string {
	if v == "" {
		fmt.Fprintf(os.Stderr, "mkimage: %s is needed for this image\n", flagName)
		os.Exit(2)
	}
	return v
}

func addFile(files []testimages.File, src, dst string) ([]testimages.File, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	return append(files, testimages.File{Path: dst, Data: data, Mode: 0o755}), nil
}

// iptablesCommands are the names xtables-nft-multi answers to that
// kube-proxy and kindnet-lite call.
var iptablesCommands = []string{
	"iptables", "iptables-save", "iptables-restore",
	"ip6tables", "ip6tables-save", "ip6tables-restore",
	"iptables-nft", "iptables-nft-save", "iptables-nft-restore",
	"ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore",
}

// addIPTables adds iptables in its nft flavour from the Debian root
// filesystem root: xtables-nft-multi and its command names, the xtables
// extensions, the libraries they load and /etc/protocols (iptables looks
// protocol names up there).
func addIPTables(files []testimages.File, root string) ([]testimages.File, error) {
	r := newRootfs(root)
	if err := r.addELF("/usr/sbin/xtables-nft-multi"); err != nil {
		return nil, err
	}
	exts, err := filepath.Glob(filepath.Join(root, "usr/lib/*/xtables/*.so"))
	if err != nil {
		return nil, err
	}
	if len(exts) == 0 {
		return nil, fmt.Errorf("no xtables extensions in %s", root)
	}
	for _, e := range exts {
		if err := r.addELF("/" + strings.TrimPrefix(e, filepath.Clean(root)+"/")); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{"/etc/protocols", "/etc/ethertypes"} {
		if _, err := r.resolve(p); err == nil {
			if err := r.add(p); err != nil {
				return nil, err
			}
		}
	}
	files = append(files, r.list()...)
	for _, c := range iptablesCommands {
		files = append(files, testimages.File{Path: "/usr/sbin/" + c, Link: "xtables-nft-multi"})
	}
	return files, nil
}

// rootfs copies files out of a root filesystem into image files, keeping
// the symlinks met on the way (e.g. Debian's /lib -> usr/lib) as symlinks,
// so programs find their files at the same paths as on the node.
type rootfs struct {
	dir   string
	files map[string]testimages.File
	elfs  map[string]bool // ELF files whose libraries are added
}

func newRootfs(dir string) *rootfs {
	return &rootfs{dir: dir, files: map[string]testimages.File{}, elfs: map[string]bool{}}
}

// libDirs are where the dynamic loader looks for libraries (no ld.so.cache
// in the image: these are its built-in directories on Debian amd64/arm64).
var libDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// resolution is a path resolved inside the root: the real file and the
// symlinks that lead to it.
type resolution struct {
	real  string
	links []testimages.File
}

// resolve follows p inside the root, component by component: an absolute
// symlink target is taken relative to the root, never the host's /.
func (r *rootfs) resolve(p string) (resolution, error) {
	var res resolution
	pending := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	cur := "/"
	for hops := 0; len(pending) > 0; {
		part := pending[0]
		pending = pending[1:]
		if part == "" || part == "." {
			continue
		}
		if part == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, part)
		fi, err := os.Lstat(filepath.Join(r.dir, next))
		if err != nil {
			return res, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return res, fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(r.dir, next))
		if err != nil {
			return res, err
		}
		res.links = append(res.links, testimages.File{Path: next, Link: target})
		if path.IsAbs(target) {
			cur = "/"
		}
		pending = append(strings.Split(strings.Trim(target, "/"), "/"), pending...)
	}
	res.real = cur
	return res, nil
}

// add adds the file at p, and the symlinks leading to it.
func (r *rootfs) add(p string) error {
	_, err := r.addReal(p)
	return err
}

func (r *rootfs) addReal(p string) (string, error) {
	res, err := r.resolve(p)
	if err != nil {
		return "", err
	}
	for _, l := range res.links {
		r.files[l.Path] = l
	}
	if _, ok := r.files[res.real]; ok {
		return res.real, nil
	}
	host := filepath.Join(r.dir, res.real)
	fi, err := os.Stat(host)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", res.real)
	}
	data, err := os.ReadFile(host)
	if err != nil {
		return "", err
	}
	r.files[res.real] = testimages.File{Path: res.real, Data: data, Mode: fi.Mode().Perm()}
	return res.real, nil
}

// addELF adds the ELF file at p with its program interpreter and, through
// DT_NEEDED, every library it loads.
func (r *rootfs) addELF(p string) error {
	real, err := r.addReal(p)
	if err != nil {
		return err
	}
	if r.elfs[real] {
		return nil
	}
	r.elfs[real] = true
	f, err := elf.Open(filepath.Join(r.dir, real))
	if err != nil {
		return fmt.Errorf("%s: %w", real, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(b, 0); err != nil {
			return fmt.Errorf("%s: interpreter: %w", real, err)
		}
		if err := r.add(strings.TrimRight(string(b), "\x00")); err != nil {
			return fmt.Errorf("%s: interpreter: %w", real, err)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: %w", real, err)
	}
	for _, lib := range libs {
		found := false
		for _, d := range libDirs {
			if _, err := r.resolve(path.Join(d, lib)); err != nil {
				continue
			}
			if err := r.addELF(path.Join(d, lib)); err != nil {
				return err
			}
			found = true
			break
		}
		if !found {
			return fmt.Errorf("%s needs %s: not found in the root filesystem", real, lib)
		}
	}
	return nil
}

func (r *rootfs) list() []testimages.File {
	out := make([]testimages.File, 0, len(r.files))
	for _, f := range r.files {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}
