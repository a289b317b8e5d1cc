package benchtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is go-containerregistry's registry (pkg/registry) served over
// plain HTTP on 127.0.0.1, its blobs in files, counting what it serves.
type Registry struct {
	// Host is host:port, the registry part of image references.
	Host string
	// URL is http://Host.
	URL string
	*Counter

	blobs *fileBlobs
}

// StartRegistry starts a registry keeping uploaded blobs in dir, until
// the test ends.
func StartRegistry(t testing.TB, dir string) *Registry {
	t.Helper()
	blobs := &fileBlobs{dir: dir, files: map[string]blobFile{}}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := registry.New(registry.WithBlobHandler(blobs), registry.Logger(log.New(io.Discard, "", 0)))
	c := NewCounter(h)
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return &Registry{Host: u.Host, URL: srv.URL, Counter: c, blobs: blobs}
}

// Ref is the reference of repo:tag on this registry.
func (r *Registry) Ref(repo, tag string) string { return r.Host + "/" + repo + ":" + tag }

// Push stores img as repo:tag and returns its reference. Blobs go into
// the blob store directly (layers of type *Layer by their file, others
// copied), the manifest with a PUT, as a push would end. Reset the
// counters after pushing.
func (r *Registry) Push(ctx context.Context, repo, tag string, img v1.Image) (string, error) {
	layers, err := img.Layers()
	if err != nil {
		return "", err
	}
	for _, l := range layers {
		if fl, ok := l.(*Layer); ok {
			r.blobs.add(fl.digest, fl.File, fl.size)
			continue
		}
		h, err := l.Digest()
		if err != nil {
			return "", err
		}
		rc, err := l.Compressed()
		if err != nil {
			return "", err
		}
		if err := r.blobs.Put(ctx, repo, h, rc); err != nil {
			return "", err
		}
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return "", err
	}
	configDigest, err := img.ConfigName()
	if err != nil {
		return "", err
	}
	if err := r.blobs.Put(ctx, repo, configDigest, io.NopCloser(bytes.NewReader(config))); err != nil {
		return "", err
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return "", err
	}
	mt, err := img.MediaType()
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, r.URL+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(manifest))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", string(mt))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("push %s:%s: %w", repo, tag, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("push %s:%s: %s: %s", repo, tag, resp.Status, body)
	}
	return r.Ref(repo, tag), nil
}

// IsBlob tells whether a registry URL path is a blob (layer or config).
func IsBlob(path string) bool { return strings.Contains(path, "/blobs/sha256:") }

// BlobDigest returns the digest of a blob URL path ("" if it is none).
func BlobDigest(path string) string {
	if i := strings.Index(path, "/blobs/"); i >= 0 {
		return path[i+len("/blobs/"):]
	}
	return ""
}

// Image returns a linux/GOARCH OCI image (OCI manifest, as zstd layers
// require) of layers with config, created at created.
func Image(layers []*Layer, config v1.Config, created time.Time) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg := &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: created},
		Config:       config,
		RootFS:       v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{
			Layer:     l,
			MediaType: types.OCILayerZStd,
			History:   v1.History{Created: v1.Time{Time: l.MTime}, CreatedBy: fmt.Sprintf("storepkg bench: %d store paths", len(l.Paths))},
		}
	}
	return mutate.Append(img, adds...)
}

// fileBlobs is a registry.BlobHandler over files whose digests are known
// (so serving a blob never hashes it again, unlike the registry's own disk
// handler); blobs pushed over HTTP are written into dir.
type fileBlobs struct {
	dir   string
	mu    sync.Mutex
	files map[string]blobFile
}

type blobFile struct {
	path string
	size int64
}

func (b *fileBlobs) add(h v1.Hash, path string, size int64) {
	b.mu.Lock()
	b.files[h.String()] = blobFile{path, size}
	b.mu.Unlock()
}

func (b *fileBlobs) get(h v1.Hash) (blobFile, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.files[h.String()]
	return f, ok
}

func (b *fileBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	f, ok := b.get(h)
	if !ok {
		return 0, registry.ErrNotFound
	}
	return f.size, nil
}

func (b *fileBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	f, ok := b.get(h)
	if !ok {
		return nil, registry.ErrNotFound
	}
	return os.Open(f.path)
}

func (b *fileBlobs) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	tmp, err := os.CreateTemp(b.dir, "upload-*")
	if err != nil {
		return err
	}
	n, err := io.Copy(tmp, rc)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	p := filepath.Join(b.dir, h.Algorithm+"-"+h.Hex)
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	b.add(h, p, n)
	return nil
}
