// Command installer-image writes the storepkg installer image (the image of
// the node DaemonSet: `storepkg node install`, then `storepkg agent`) as
// an OCI image layout tarball holding one image index with an image per
// platform, built in Go from binaries already compiled: no Docker, no
// registry. Load it with `kind load image-archive` or `ctr images import`
// (`--all-platforms` keeps every platform; without it, the node's own).
// Users who build with Docker use the Dockerfile at the repository root
// instead (`docker buildx build --platform linux/amd64,linux/arm64`).
//
//	installer-image -bin DIR -platforms linux/amd64,linux/arm64 -ref REF -o FILE
//
// DIR holds one directory per platform, <os>-<arch> (`make release` writes
// them), each with storepkg and containerd-shim-storepkg-v1 statically
// linked (CGO_ENABLED=0) for that platform: the installer copies the shim
// onto hosts whose libc it cannot know.
package main

import (
	"archive/tar"
	"debug/elf"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/storepkg/storepkg/integration/testimages"
)

// binaries are the files of the image, all under /usr/local/bin.
var binaries = []string{"storepkg", "containerd-shim-storepkg-v1"}

// machines are the ELF machines of the architectures the image may hold.
var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// Annotations on the index's entry in index.json that name the image:
// containerd's (the full reference, which `ctr images import` uses) and
// OCI's (the tag), as `docker buildx` writes them.
const (
	annotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

// epoch is the time of every entry of the tarball.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func main() {
	bin := flag.String("bin", "bin/release", "directory holding <os>-<arch>/ directories of static binaries")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated os/arch of the images in the index")
	ref := flag.String("ref", "ghcr.io/storepkg/storepkg:dev", "image reference to name the index with")
	out := flag.String("o", "bin/storepkg-installer.tar", "OCI layout tarball to write")
	flag.Parse()
	if err := run(*bin, strings.Split(*platforms, ","), *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "installer-image:", err)
		os.Exit(1)
	}
	fmt.Println(*out, *ref, *platforms)
}

func run(bin string, platforms []string, ref, out string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	idx, err := index(bin, platforms)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := writeLayout(tmp, idx, map[string]string{
		annotationImageName: tag.Name(),
		annotationRefName:   tag.TagStr(),
	}); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// index builds the image index: one image per platform, from
// bin/<os>-<arch>/.
func index(bin string, platforms []string) (v1.ImageIndex, error) {
	var adds []mutate.IndexAddendum
	seen := map[string]bool{}
	for _, p := range platforms {
		osName, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || osName != "linux" || machines[arch] == 0 {
			return nil, fmt.Errorf("platform %q: want linux/amd64 or linux/arm64", p)
		}
		if seen[arch] {
			return nil, fmt.Errorf("platform %q given twice", p)
		}
		seen[arch] = true
		img, err := image(filepath.Join(bin, osName+"-"+arch), osName, arch)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}},
		})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...), nil
}

// image is the installer image of one platform, with OCI media types
// throughout (an OCI index of Docker manifests is legal but mixed).
func image(dir, osName, arch string) (v1.Image, error) {
	var files []testimages.File
	for _, name := range binaries {
		p := filepath.Join(dir, name)
		if err := checkBinary(p, arch); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
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
	// testimages builds the layer and config for the build machine's
	// architecture; the image is rebuilt around that layer for arch.
	built, err := testimages.Image(files, config)
	if err != nil {
		return nil, err
	}
	cf, err := built.ConfigFile()
	if err != nil {
		return nil, err
	}
	layers, err := built.Layers()
	if err != nil {
		return nil, err
	}
	if len(layers) != len(cf.History) {
		return nil, fmt.Errorf("%s/%s image: %d layers, %d history entries", osName, arch, len(layers), len(cf.History))
	}
	history := cf.History
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = osName, arch
	cf.RootFS.DiffIDs, cf.History = nil, nil
	img, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), cf)
	if err != nil {
		return nil, err
	}
	for i, l := range layers {
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer, History: history[i]}); err != nil {
			return nil, fmt.Errorf("%s/%s image: %w", osName, arch, err)
		}
	}
	return img, nil
}

// checkBinary refuses a dynamically linked binary (on a host it would
// need the build machine's libc) and one built for another architecture
// (the image would name the wrong platform).
func checkBinary(path, arch string) error {
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
	if f.Machine != machines[arch] {
		return fmt.Errorf("%s is built for %v, not %s: build it with GOARCH=%s (make release)", path, f.Machine, arch, arch)
	}
	return nil
}

// writeLayout writes idx as an OCI image layout tarball: oci-layout,
// index.json with one entry (idx, named by annotations), and every blob
// once under blobs/sha256/, in a fixed order with fixed times, so the
// same binaries give the same file.
func writeLayout(path string, idx v1.ImageIndex, annotations map[string]string) error {
	blobs := map[string][]byte{}
	rawIdx, err := idx.RawManifest()
	if err != nil {
		return err
	}
	idxDesc, err := descriptor(idx, annotations)
	if err != nil {
		return err
	}
	blobs[idxDesc.Digest.Hex] = rawIdx
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			return err
		}
		if err := imageBlobs(img, blobs); err != nil {
			return err
		}
	}
	top, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     []v1.Descriptor{idxDesc},
	})
	if err != nil {
		return err
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	add := func(name string, data []byte) error {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	err = add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	if err == nil {
		err = add("index.json", top)
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	sort.Strings(hexes)
	for _, h := range hexes {
		if err == nil {
			err = add("blobs/sha256/"+h, blobs[h])
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// descriptor is idx's descriptor with annotations.
func descriptor(idx v1.ImageIndex, annotations map[string]string) (v1.Descriptor, error) {
	mt, err := idx.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	d, err := idx.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	n, err := idx.Size()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: n, Annotations: annotations}, nil
}

// imageBlobs adds img's manifest, config and compressed layers to blobs.
func imageBlobs(img v1.Image, blobs map[string][]byte) error {
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	blobs[d.Hex] = raw
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cn, err := img.ConfigName()
	if err != nil {
		return err
	}
	blobs[cn.Hex] = rawCfg
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		blobs[ld.Hex] = data
	}
	return nil
}
