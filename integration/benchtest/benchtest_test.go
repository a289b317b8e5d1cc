package benchtest

import (
	"archive/tar"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestLayerImageRegistry: a layer of two store paths holds their trees
// under nix/store; the same paths and date give the same blob; the
// registry serves the pushed manifest and blob and counts them.
func TestLayerImageRegistry(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "src", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a")
	must(t, os.MkdirAll(filepath.Join(a, "bin"), 0o755))
	must(t, os.WriteFile(filepath.Join(a, "bin", "hello"), []byte("#!/bin/sh\necho hi\n"), 0o555))
	must(t, os.Symlink("hello", filepath.Join(a, "bin", "hi")))
	b := filepath.Join(dir, "src", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b.txt")
	must(t, os.WriteFile(b, []byte("single file path\n"), 0o444))
	paths := []StorePath{{Base: filepath.Base(b), Src: b}, {Base: filepath.Base(a), Src: a}}

	ls, err := NewLayers(filepath.Join(dir, "layers"))
	must(t, err)
	l1, err := ls.Layer(paths, NixEpoch)
	must(t, err)
	l2, err := ls.Layer(paths[:1:1], NixEpoch)
	must(t, err)
	again, err := ls.Layer([]StorePath{paths[1], paths[0]}, NixEpoch)
	must(t, err)
	if again != l1 {
		t.Error("the same paths and date made a second layer")
	}
	other, err := ls.Layer(paths, time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC))
	must(t, err)
	if other.Hash() == l1.Hash() {
		t.Error("another build date made the same blob")
	}

	rc, err := l1.Uncompressed()
	must(t, err)
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		names = append(names, h.Name)
		if h.Name == "nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/bin/hi" && (h.Typeflag != tar.TypeSymlink || h.Linkname != "hello") {
			t.Errorf("symlink entry %+v", h)
		}
	}
	rc.Close()
	want := "nix/ nix/store/ nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/ nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/bin/ " +
		"nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/bin/hello nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/bin/hi " +
		"nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b.txt"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("layer entries:\n%s\nwant:\n%s", got, want)
	}

	img, err := Image([]*Layer{l2, l1}, v1.Config{Cmd: []string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/bin/hello"}}, NixEpoch)
	must(t, err)
	reg := StartRegistry(t, filepath.Join(dir, "registry"))
	ref, err := reg.Push(context.Background(), "bench/app", "v1", img)
	must(t, err)
	if !strings.HasPrefix(ref, reg.Host+"/bench/app:v1") {
		t.Errorf("ref %s", ref)
	}
	reg.Reset()

	resp, err := http.Get(reg.URL + "/v2/bench/app/manifests/v1")
	must(t, err)
	var m v1.Manifest
	must(t, json.NewDecoder(resp.Body).Decode(&m))
	resp.Body.Close()
	if len(m.Layers) != 2 || m.Layers[1].Digest != l1.Hash() || m.Layers[0].MediaType != types.OCILayerZStd {
		t.Fatalf("manifest layers %+v", m.Layers)
	}
	resp, err = http.Get(reg.URL + "/v2/bench/app/blobs/" + l1.Hash().String())
	must(t, err)
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n != l1.Bytes() {
		t.Errorf("blob: %d bytes, want %d", n, l1.Bytes())
	}
	blobs := reg.Total(IsBlob)
	if blobs.Requests != 1 || blobs.Bytes != l1.Bytes() {
		t.Errorf("counted blobs %+v, want 1 request of %d bytes", blobs, l1.Bytes())
	}
	if all := reg.Total(nil); all.Requests != 2 {
		t.Errorf("counted %d requests, want 2", all.Requests)
	}
}

func TestTreeUsageMemAndLogWatch(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "f"), make([]byte, 1000), 0o644))
	must(t, os.Link(filepath.Join(dir, "f"), filepath.Join(dir, "g")))
	must(t, os.Symlink("f", filepath.Join(dir, "h")))
	u, err := TreeUsage(dir)
	must(t, err)
	if u.Files != 1 || u.Bytes != 1000 {
		t.Errorf("usage %+v, want 1 file of 1000 bytes", u)
	}
	m, err := ReadMem(os.Getpid())
	must(t, err)
	if m.RSS <= 0 || m.PSS <= 0 || m.RSSAnon+m.RSSFile > m.RSS+(1<<20) {
		t.Errorf("odd memory %+v", m)
	}
	maps, err := Mappings(os.Getpid())
	must(t, err)
	if len(maps) == 0 {
		t.Error("no mappings")
	}

	w, err := WatchDir(dir)
	must(t, err)
	defer w.Close()
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.WriteFile(filepath.Join(dir, "app.log"), []byte("2025-01-01T00:00:00Z stdout F ready\n"), 0o644)
	}()
	start := time.Now()
	at, err := w.Wait("app.log", "ready", 5*time.Second)
	must(t, err)
	if at.Before(start) {
		t.Errorf("seen at %v, before the wait began", at)
	}
	if _, err := w.Wait("other.log", "never", 30*time.Millisecond); err == nil {
		t.Error("waiting for a line that never comes succeeded")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
