// Command installer-image writes the storepkg installer image (the image of
// the node DaemonSet: `storepkg node install`, then `storepkg agent`) as an
// image tarball, built in Go from binaries already compiled: no Docker, no
// registry. Load it with `kind load image-archive`, `ctr images import` or
// `docker load`. Users who build with Docker use the Dockerfile at the
// repository root instead; both give the same layout.
//
//	installer-image -bin DIR -ref REF -o FILE
//
// DIR holds storepkg and containerd-shim-storepkg-v1, statically linked
// (CGO_ENABLED=0): the installer copies the shim onto hosts whose libc it
// cannot know.
package main

import (
	"debug/elf"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/storepkg/storepkg/integration/testimages"
)

// binaries are the files of the image, all under /usr/local/bin.
var binaries = []string{"storepkg", "containerd-shim-storepkg-v1"}

func main() {
	bin := flag.String("bin", "bin/static", "directory holding the static binaries")
	ref := flag.String("ref", "ghcr.io/storepkg/storepkg:dev", "image reference to tag the tarball with")
	out := flag.String("o", "bin/storepkg-installer.tar", "image tarball to write")
	flag.Parse()
	if err := run(*bin, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "installer-image:", err)
		os.Exit(1)
	}
	fmt.Println(*out, *ref)
}

func run(bin, ref, out string) error {
	var files []testimages.File
	for _, name := range binaries {
		p := filepath.Join(bin, name)
		if err := checkStatic(p); err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, testimages.File{Path: "/usr/local/bin/" + name, Mode: 0o755, Data: data})
	}
	config := v1.Config{
		Entrypoint: []string{"/usr/local/bin/storepkg"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		Labels: map[string]string{
			"org.opencontainers.image.title":  "storepkg",
			"org.opencontainers.image.source": "https://github.com/storepkg/storepkg",
		},
	}
	tmp := out + ".tmp"
	if err := testimages.Write(tmp, ref, files, config); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// checkStatic refuses a dynamically linked binary: on a host it would need
// the build machine's libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}
