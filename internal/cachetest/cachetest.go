// Package cachetest writes Nix binary caches from Go, for tests and
// benchmarks that need shapes real builds make slowly (thousands of
// paths). Caches it writes are read by real Nix like its own.
package cachetest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	"github.com/storepkg/storepkg/pkg/nar"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/nixbase32"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// Writer adds store paths to a file binary cache at Dir.
type Writer struct {
	Dir  string
	Key  narinfo.SecretKey
	Zstd bool // compress NARs with zstd; otherwise none

	enc *zstd.Encoder
}

// NewWriter creates the cache directory and its nix-cache-info.
func NewWriter(dir string, key narinfo.SecretKey, zstdCompress bool) (*Writer, error) {
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		return nil, err
	}
	info := "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte(info), 0o644); err != nil {
		return nil, err
	}
	return &Writer{Dir: dir, Key: key, Zstd: zstdCompress}, nil
}

// MakePath returns a syntactically valid store path named name whose
// hash part is derived from seed (synthetic paths have no derivation).
func MakePath(seed, name string) storepath.Path {
	sum := sha256.Sum256([]byte(seed + "/" + name))
	p, err := storepath.ParseBase(nixbase32.EncodeToString(sum[:20]) + "-" + name)
	if err != nil {
		panic(err)
	}
	return p
}

// Add writes the NAR of the tree at src as store path p with references refs.
func (w *Writer) Add(p storepath.Path, src string, refs []storepath.Path) (*narinfo.NarInfo, error) {
	var narBuf bytes.Buffer
	if err := nar.Dump(&narBuf, src); err != nil {
		return nil, err
	}
	ni := &narinfo.NarInfo{StorePath: p, References: refs, NarSize: uint64(narBuf.Len()), Compression: "none"}
	ni.NarHash = sha256.Sum256(narBuf.Bytes())
	file := narBuf.Bytes()
	ext := ".nar"
	if w.Zstd {
		if w.enc == nil {
			enc, err := zstd.NewWriter(nil)
			if err != nil {
				return nil, err
			}
			w.enc = enc
		}
		file = w.enc.EncodeAll(narBuf.Bytes(), nil)
		ni.Compression, ext = "zstd", ".nar.zst"
	}
	fh := narinfo.Hash(sha256.Sum256(file))
	ni.FileHash, ni.FileSize = &fh, uint64(len(file))
	ni.URL = "nar/" + nixbase32.EncodeToString(fh[:]) + ext
	if err := os.WriteFile(filepath.Join(w.Dir, ni.URL), file, 0o644); err != nil {
		return nil, err
	}
	ni.Sigs = []string{w.Key.Sign(ni)}
	if err := os.WriteFile(filepath.Join(w.Dir, p.HashPart()+".narinfo"), []byte(ni.String()), 0o644); err != nil {
		return nil, err
	}
	return ni, nil
}

// Synthetic writes a closure of n small paths shaped like real software:
// a root referring to ~sqrt(n) "package" paths, each referring to its own
// leaves and to a few shared ones. It returns the root and all paths.
func (w *Writer) Synthetic(seed string, n int) (storepath.Path, []storepath.Path, error) {
	if n < 3 {
		return "", nil, fmt.Errorf("cachetest: closure of %d paths is too small", n)
	}
	tmp, err := os.MkdirTemp("", "cachetest-")
	if err != nil {
		return "", nil, err
	}
	defer os.RemoveAll(tmp)
	groups := 1
	for groups*groups < n {
		groups++
	}
	leaves := n - 1 - groups
	var all []storepath.Path
	var leafPaths []storepath.Path
	add := func(name string, refs []storepath.Path) (storepath.Path, error) {
		p := MakePath(seed, name)
		dir := filepath.Join(tmp, p.Base())
		if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
			return "", err
		}
		content := fmt.Sprintf("#!/bin/sh\necho %s\n", name)
		for _, r := range refs {
			content += "# uses " + r.Absolute() + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, "bin", name), []byte(content), 0o755); err != nil {
			return "", err
		}
		if _, err := w.Add(p, dir, refs); err != nil {
			return "", err
		}
		all = append(all, p)
		return p, nil
	}
	for i := range leaves {
		p, err := add(fmt.Sprintf("leaf-%05d", i), nil)
		if err != nil {
			return "", nil, err
		}
		leafPaths = append(leafPaths, p)
	}
	var groupPaths []storepath.Path
	for g := range groups {
		var refs []storepath.Path
		for i := g; i < len(leafPaths); i += groups {
			refs = append(refs, leafPaths[i])
		}
		// Shared libraries every package uses.
		for i := 0; i < 3 && i < len(leafPaths); i++ {
			if i%groups != g {
				refs = append(refs, leafPaths[i])
			}
		}
		p, err := add(fmt.Sprintf("pkg-%04d", g), refs)
		if err != nil {
			return "", nil, err
		}
		groupPaths = append(groupPaths, p)
	}
	root, err := add("root", groupPaths)
	if err != nil {
		return "", nil, err
	}
	return root, all, nil
}
