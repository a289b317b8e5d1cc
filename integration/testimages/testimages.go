// Package testimages builds small container images for tests without a
// registry: one-layer image tarballs (docker-archive format, which
// `ctr images import` reads) for the current architecture.
//
//   - WritePause: the CRI sandbox ("pause") image, a static Go program that
//     blocks, reaps children and exits 0 on SIGTERM/SIGINT. storepkg pods use
//     it as their placeholder image too.
//   - WriteBusybox: Debian's static busybox with a few applet links, the
//     plain-image container of mixed pods.
//
// Write builds any other image from a list of files.
package testimages

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image references of the images this package writes.
const (
	// PauseRef is the CRI sandbox image (containerd's pinned sandbox image).
	PauseRef = "registry.k8s.io/pause:3.10.1"
	// BusyboxRef is the plain busybox image.
	BusyboxRef = "docker.io/library/busybox:storepkg-test"
)

// BusyboxApplets are the applets linked to /bin/busybox in the busybox image.
var BusyboxApplets = []string{"sh", "echo", "cat", "ls", "sleep", "wget", "nc", "httpd", "true"}

// epoch is the modification time of every file and the creation time of
// every image, so the same inputs give the same image digest.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// File is one entry of an image layer. Exactly one of Data (a regular
// file), Link (a symlink target) or Dir (a directory) describes it.
type File struct {
	Path string // absolute path in the image, e.g. "/bin/sh"
	Mode os.FileMode
	Data []byte
	Link string
	Dir  bool
}

// Write writes a one-layer image holding files, with config, as a
// docker-archive tarball at tarPath tagged ref. Parent directories of files
// are added as needed. OS and architecture are linux/runtime.GOARCH.
func Write(tarPath, ref string, files []File, config v1.Config) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	img, err := Image(files, config)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		return fmt.Errorf("write image %s to %s: %w", ref, tarPath, err)
	}
	return nil
}

// Image returns a one-layer linux/runtime.GOARCH image holding files.
func Image(files []File, config v1.Config) (v1.Image, error) {
	layerTar, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	cfg := &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config:       config,
		RootFS:       v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "storepkg testimages"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	return img, nil
}

// layerTar returns an uncompressed tar of files, with their parent
// directories, sorted by path.
func layerTar(files []File) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			continue
		}
		f.Path = p
		entries[p] = f
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := entries[dir]; !ok {
				entries[dir] = File{Path: dir, Dir: true, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := entries[p]
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    int64(f.Mode.Perm()),
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		switch {
		case f.Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			if hdr.Mode == 0 {
				hdr.Mode = 0o755
			}
		case f.Link != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = f.Link
			hdr.Mode = 0o777
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
			if hdr.Mode == 0 {
				hdr.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("layer entry %s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// baseFiles are the few files every test image has: users for tools that
// look them up, a /tmp, and the mount points runc would create anyway.
func baseFiles() []File {
	return []File{
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{Path: "/tmp", Dir: true, Mode: 0o777 | os.ModeSticky},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/proc", Dir: true},
		{Path: "/sys", Dir: true},
		{Path: "/dev", Dir: true},
	}
}

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

//go:embed pause/main.go
var pauseSource embed.FS

// WritePause builds the pause program and writes the pause image tarball
// into dir. It needs the go command (on PATH or in $GOROOT/bin).
func WritePause(dir string) (tarPath, ref string, err error) {
	bin, err := buildPause()
	if err != nil {
		return "", "", err
	}
	files := append(baseFiles(), File{Path: "/pause", Data: bin, Mode: 0o755})
	tarPath = filepath.Join(dir, "pause.tar")
	config := v1.Config{
		Entrypoint: []string{"/pause"},
		Env:        []string{defaultPath},
		WorkingDir: "/",
		User:       "65535:65535",
	}
	if err := Write(tarPath, PauseRef, files, config); err != nil {
		return "", "", err
	}
	return tarPath, PauseRef, nil
}

var pauseCache struct {
	sync.Mutex
	bin []byte
}

// buildPause compiles pause/main.go into a static binary for
// linux/runtime.GOARCH and returns it, once per process. The source is
// built as its own module in a temporary directory, so this works from any
// working directory; the go build cache makes the first build cheap too.
func buildPause() ([]byte, error) {
	pauseCache.Lock()
	defer pauseCache.Unlock()
	if pauseCache.bin != nil {
		return pauseCache.bin, nil
	}
	bin, err := compilePause()
	if err != nil {
		return nil, err
	}
	pauseCache.bin = bin
	return bin, nil
}

func compilePause() ([]byte, error) {
	goBin, err := goCommand()
	if err != nil {
		return nil, err
	}
	src, err := pauseSource.ReadFile("pause/main.go")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "testimages-pause-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "main.go"), src, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "go.mod"), []byte("module pause\n\ngo 1.22\n"), 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(tmp, "pause")
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH,
		"GOWORK=off", "GOFLAGS=-buildvcs=false", "GOTOOLCHAIN=local")
	if output, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %w\n%s", err, output)
	}
	return os.ReadFile(out)
}

// goCommand finds the go command: on PATH, else in $GOROOT/bin.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("go command not found: it is needed to build the pause image")
}

// Check reports what is missing to write the images: the go command (for
// the pause program) and a static busybox.
func Check() error {
	if _, err := goCommand(); err != nil {
		return err
	}
	var errs []error
	for _, p := range BusyboxCandidates {
		err := checkStatic(p)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("no static busybox (install Debian's busybox-static): %w", errors.Join(errs...))
}

// BusyboxCandidates are where WriteBusybox looks for a static busybox
// (Debian's busybox-static installs /bin/busybox).
var BusyboxCandidates = []string{"/bin/busybox", "/usr/bin/busybox"}

// WriteBusybox writes the busybox image tarball into dir: /bin/busybox
// from the host (it must be statically linked) and links for
// BusyboxApplets. Its command is `sh`.
func WriteBusybox(dir string) (tarPath, ref string, err error) {
	bin, err := hostBusybox()
	if err != nil {
		return "", "", err
	}
	files := append(baseFiles(), File{Path: "/bin/busybox", Data: bin, Mode: 0o755})
	for _, applet := range BusyboxApplets {
		files = append(files, File{Path: "/bin/" + applet, Link: "busybox"})
	}
	tarPath = filepath.Join(dir, "busybox.tar")
	config := v1.Config{
		Cmd:        []string{"sh"},
		Env:        []string{defaultPath},
		WorkingDir: "/",
	}
	if err := Write(tarPath, BusyboxRef, files, config); err != nil {
		return "", "", err
	}
	return tarPath, BusyboxRef, nil
}

// hostBusybox returns the first static busybox of BusyboxCandidates.
func hostBusybox() ([]byte, error) {
	var errs []error
	for _, p := range BusyboxCandidates {
		if err := checkStatic(p); err != nil {
			errs = append(errs, err)
			continue
		}
		return os.ReadFile(p)
	}
	return nil, fmt.Errorf("no static busybox (install Debian's busybox-static): %w", errors.Join(errs...))
}

// checkStatic fails unless p is an ELF executable for this architecture
// without a program interpreter, i.e. one that runs in an empty rootfs.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if want := elfMachine(); want != elf.EM_NONE && f.Machine != want {
		return fmt.Errorf("%s: built for %v, not %s", p, f.Machine, runtime.GOARCH)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked", p)
		}
	}
	return nil
}

func elfMachine() elf.Machine {
	switch runtime.GOARCH {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	}
	return elf.EM_NONE
}
