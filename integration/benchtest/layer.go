package benchtest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// StorePath is a store path to put into an image layer, and where its
// tree is on this machine (e.g. in a chroot store Nix built into).
type StorePath struct {
	Base string // <hash>-<name>
	Src  string // the tree (directory, file or symlink)
}

// NixEpoch is the modification time Nix gives every file in the store,
// and so the one reproducible image builders (nix2container,
// dockerTools) use.
var NixEpoch = time.Unix(1, 0).UTC()

// Layer is an OCI layer (tar+zstd) holding store paths under nix/store/,
// written to a file. It implements v1.Layer.
type Layer struct {
	File     string
	Paths    []string // store path bases, sorted
	MTime    time.Time
	digest   v1.Hash
	diffID   v1.Hash
	size     int64
	TarBytes int64 // bytes of the tar stream
}

func (l *Layer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *Layer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *Layer) Size() (int64, error)     { return l.size, nil }
func (l *Layer) MediaType() (types.MediaType, error) {
	return types.OCILayerZStd, nil
}
func (l *Layer) Compressed() (io.ReadCloser, error) { return os.Open(l.File) }
func (l *Layer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.File)
	if err != nil {
		return nil, err
	}
	d, err := zstd.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{d.IOReadCloser(), f}, nil
}

// Hash is the layer's digest (sha256:…).
func (l *Layer) Hash() v1.Hash { return l.digest }

// Bytes is the compressed size.
func (l *Layer) Bytes() int64 { return l.size }

type readCloser struct {
	io.ReadCloser
	f *os.File
}

func (r readCloser) Close() error { r.ReadCloser.Close(); return r.f.Close() }

// Layers writes layers into Dir, each (set of paths, mtime) once, so
// images that share a layer share its blob, as a registry does.
type Layers struct {
	Dir string

	mu    sync.Mutex
	byKey map[string]*Layer
}

// NewLayers makes dir and returns a layer writer for it.
func NewLayers(dir string) (*Layers, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &Layers{Dir: dir, byKey: map[string]*Layer{}}, nil
}

// Layer returns the layer holding paths (their trees under
// nix/store/<base>, with nix/ and nix/store/ themselves), every entry
// dated mtime: one build of the layer. Paths are put in name order.
func (ls *Layers) Layer(paths []StorePath, mtime time.Time) (*Layer, error) {
	sorted := slices.Clone(paths)
	slices.SortFunc(sorted, func(a, b StorePath) int { return strings.Compare(a.Base, b.Base) })
	sorted = slices.CompactFunc(sorted, func(a, b StorePath) bool { return a.Base == b.Base })
	bases := make([]string, len(sorted))
	for i, p := range sorted {
		bases[i] = p.Base
	}
	key := mtime.UTC().Format(time.RFC3339Nano) + " " + strings.Join(bases, " ")
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if l, ok := ls.byKey[key]; ok {
		return l, nil
	}
	l, err := writeLayer(ls.Dir, sorted, mtime)
	if err != nil {
		return nil, err
	}
	l.Paths = bases
	ls.byKey[key] = l
	return l, nil
}

// writeLayer writes the tar+zstd stream to a temporary file, then names
// it by its digest.
func writeLayer(dir string, paths []StorePath, mtime time.Time) (*Layer, error) {
	f, err := os.CreateTemp(dir, "layer-*.tmp")
	if err != nil {
		return nil, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	compressedHash := sha256.New()
	enc, err := zstd.NewWriter(io.MultiWriter(f, compressedHash), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	tarHash := sha256.New()
	counted := &countWriter{w: io.MultiWriter(enc, tarHash)}
	tw := tar.NewWriter(counted)
	for _, d := range []string{"nix/", "nix/store/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, p := range paths {
		if err := addTree(tw, p, mtime); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	l := &Layer{
		MTime:    mtime,
		size:     fi.Size(),
		TarBytes: counted.n,
		digest:   v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(compressedHash.Sum(nil))},
		diffID:   v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(tarHash.Sum(nil))},
	}
	l.File = filepath.Join(dir, l.digest.Hex+".tar.zst")
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(f.Name(), l.File); err != nil {
		return nil, err
	}
	return l, nil
}

// addTree adds one store path's tree as nix/store/<base>/...
func addTree(tw *tar.Writer, p StorePath, mtime time.Time) error {
	root := path.Join("nix/store", p.Base)
	return filepath.WalkDir(p.Src, func(src string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(p.Src, src)
		if err != nil {
			return err
		}
		name := root
		if rel != "." {
			name = path.Join(root, filepath.ToSlash(rel))
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: name, Mode: int64(fi.Mode().Perm()), ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			if hdr.Linkname, err = os.Readlink(src); err != nil {
				return err
			}
			hdr.Mode = 0o777
		case fi.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case fi.Mode().IsRegular():
			hdr.Typeflag = tar.TypeReg
			hdr.Size = fi.Size()
		default:
			return fmt.Errorf("%s: unsupported file type %v", src, fi.Mode())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
		}
		return nil
	})
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
