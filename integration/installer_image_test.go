package integration

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/storepkg/storepkg/integration/critest"
)

// TestInstallerImageIndex: `make image`'s program writes one image index
// for linux/amd64 and linux/arm64 whose images hold the binaries of their
// own architecture; real containerd 2.3.4 (the kind node's) imports it
// with the very command `kind load image-archive` runs, and CRI runs the
// host's image of the index.
func TestInstallerImageIndex(t *testing.T) {
	critest.Require(t)
	dir := t.TempDir()
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for arch := range machines {
		buildFor(t, arch, filepath.Join(dir, "release", "linux-"+arch)+"/", "./cmd/storepkg", "./cmd/containerd-shim-storepkg-v1")
	}
	const ref = "ghcr.io/storepkg/storepkg:index-test"
	archive := filepath.Join(dir, "installer.tar")
	if out, err := exec.Command("go", "run", "./cmd/installer-image", "-bin", filepath.Join(dir, "release"),
		"-platforms", "linux/amd64,linux/arm64", "-ref", ref, "-o", archive).CombinedOutput(); err != nil {
		t.Fatalf("installer-image: %v\n%s", err, out)
	}

	// The layout: index.json names one index, with one image per platform.
	layoutDir := filepath.Join(dir, "layout")
	untar(t, archive, layoutDir)
	top, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 || tm.Manifests[0].Annotations["io.containerd.image.name"] != ref ||
		tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "index-test" {
		t.Fatalf("index.json: %+v, want one index named %s", tm.Manifests, ref)
	}
	idx, err := top.ImageIndex(tm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(machines) {
		t.Errorf("the index has %d images, want %d", len(im.Manifests), len(machines))
	}
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if m.Platform == nil || m.Platform.OS != "linux" || cf.OS != "linux" || cf.Architecture != m.Platform.Architecture {
			t.Errorf("image %s: platform %+v, config %s/%s", m.Digest, m.Platform, cf.OS, cf.Architecture)
			continue
		}
		for _, name := range []string{"storepkg", "containerd-shim-storepkg-v1"} {
			if got := layerMachine(t, img, "usr/local/bin/"+name); got != machines[cf.Architecture] {
				t.Errorf("%s image: %s is for %v, want %v", cf.Architecture, name, got, machines[cf.Architecture])
			}
		}
	}

	// kind's import (sigs.k8s.io/kind nodeutils.LoadImageArchive), on the
	// kind node's containerd.
	env := critest.Start(t, critest.Options{})
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := env.CtrErr(f, "images", "import", "--all-platforms", "--digests", "--snapshotter=overlayfs", "-"); err != nil {
		t.Fatal(err)
	}
	if out, err := env.CtrErr(nil, "images", "ls"); err != nil || !strings.Contains(out, ref) || !strings.Contains(out, "linux/amd64,linux/arm64") {
		t.Fatalf("ctr images ls after the import does not show %s for linux/amd64,linux/arm64: %v\n%s", ref, err, out)
	}
	pod := env.PodConfig("installer", "default", nil)
	podID := env.RunPodSandbox(t, critest.HandlerRunc, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("storepkg", ref, []string{"/usr/local/bin/storepkg", "version"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "storepkg", 30*time.Second)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
}

// layerMachine is the ELF machine of the file at name in img's layers.
func layerMachine(t *testing.T, img v1.Image, name string) elf.Machine {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if hdr.Name != name {
				continue
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			rc.Close()
			f, err := elf.NewFile(bytes.NewReader(data))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f.Machine
		}
		rc.Close()
	}
	t.Fatalf("no %s in the image", name)
	return 0
}

// untar extracts the regular files of archive (an OCI layout) into dir.
func untar(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag != tar.TypeReg || !filepath.IsLocal(hdr.Name) {
			t.Fatalf("%s: entry %q is not a regular file inside the layout", archive, hdr.Name)
		}
		p := filepath.Join(dir, hdr.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
