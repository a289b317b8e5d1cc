package testimages

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/storepkg/storepkg/internal/testenv"
)

// readImage loads the image tagged ref from a tarball and returns its config
// and a map of its layer's entries.
func readImage(t *testing.T, tarPath, ref string) (*v1.ConfigFile, map[string]*tar.Header) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(tarPath, &tag)
	if err != nil {
		t.Fatalf("read %s from %s: %v", ref, tarPath, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("want one layer, got %d (diff ids %d)", len(layers), len(cfg.RootFS.DiffIDs))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = hdr
	}
	return cfg, entries
}

func TestWriteBusybox(t *testing.T) {
	if _, err := hostBusybox(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	tarPath, ref, err := WriteBusybox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg, entries := readImage(t, tarPath, ref)
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.Config.Cmd, []string{"sh"}) {
		t.Errorf("cmd %q", cfg.Config.Cmd)
	}
	if hdr := entries["bin/busybox"]; hdr == nil || hdr.Mode&0o111 == 0 {
		t.Errorf("bin/busybox missing or not executable: %+v", hdr)
	}
	for _, applet := range BusyboxApplets {
		if hdr := entries["bin/"+applet]; hdr == nil || hdr.Typeflag != tar.TypeSymlink || hdr.Linkname != "busybox" {
			t.Errorf("bin/%s is not a link to busybox: %+v", applet, hdr)
		}
	}
}

func TestWritePause(t *testing.T) {
	if _, err := goCommand(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	dir := t.TempDir()
	tarPath, ref, err := WritePause(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ref != PauseRef {
		t.Errorf("ref %q", ref)
	}
	cfg, entries := readImage(t, tarPath, ref)
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("entrypoint %q", cfg.Config.Entrypoint)
	}
	if entries["pause"] == nil {
		t.Fatal("no /pause in the layer")
	}

	// The same inputs give the same image.
	again, _, err := WritePause(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, tarPath, ref) != digest(t, again, ref) {
		t.Error("two builds of the pause image differ")
	}

	// The binary is static and exits 0 on SIGTERM.
	bin, err := buildPause()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "pause")
	if err := os.WriteFile(p, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkStatic(p); err != nil {
		t.Error(err)
	}
	cmd := exec.Command(p)
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let it install its signal handlers
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("pause after SIGTERM: %v (stderr: %s)", err, stderr)
	}
}

func digest(t *testing.T, tarPath, ref string) v1.Hash {
	t.Helper()
	tag, _ := name.NewTag(ref)
	img, err := tarball.ImageFromPath(tarPath, &tag)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
