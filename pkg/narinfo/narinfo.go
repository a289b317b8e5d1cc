// Package narinfo parses the metadata files of Nix binary caches
// (<hash>.narinfo and nix-cache-info) and verifies their signatures.
package narinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// ErrFormat is wrapped by every error about a malformed narinfo.
var ErrFormat = errors.New("malformed narinfo")

// MaxSize bounds the narinfo documents we read; real ones are under a few KiB
// even with thousands of references.
const MaxSize = 4 << 20

// NarInfo is a parsed narinfo file.
type NarInfo struct {
	StorePath   storepath.Path
	URL         string // relative to the cache, e.g. "nar/<filehash>.nar.xz"
	Compression string // "none", "xz", "zstd", "bzip2", "br", …; "bzip2" when absent, as Nix assumes
	FileHash    *Hash  // of the compressed file; optional
	FileSize    uint64 // 0 when absent
	NarHash     Hash
	NarSize     uint64
	References  []storepath.Path // basenames, as listed
	Deriver     string           // basename of the .drv, "" when absent or "unknown-deriver"
	System      string
	Sigs        []string // "keyname:base64sig"
	CA          string
}

// Parse reads a narinfo. Unknown keys are ignored (caches add their own);
// duplicate keys other than Sig, and missing required keys, are refused.
func Parse(r io.Reader) (*NarInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrFormat, MaxSize)
	}
	return ParseBytes(data)
}

// ParseBytes is Parse on an in-memory document.
func ParseBytes(data []byte) (*NarInfo, error) {
	ni := &NarInfo{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), MaxSize)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if text == "" {
			continue
		}
		key, value, ok := strings.Cut(text, ": ")
		if !ok {
			// Nix writes "References: " with a trailing space; tolerate its absence.
			if k, found := strings.CutSuffix(text, ":"); found {
				key, value = k, ""
			} else {
				return nil, fmt.Errorf("%w: line %d: %q is not \"Key: value\"", ErrFormat, line, text)
			}
		}
		if key != "Sig" {
			if seen[key] {
				return nil, fmt.Errorf("%w: line %d: duplicate key %q", ErrFormat, line, key)
			}
			seen[key] = true
		}
		if err := ni.set(key, value); err != nil {
			return nil, fmt.Errorf("%w: line %d: %s: %v", ErrFormat, line, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	for _, k := range []string{"StorePath", "URL", "NarHash", "NarSize"} {
		if !seen[k] {
			return nil, fmt.Errorf("%w: missing %s", ErrFormat, k)
		}
	}
	if !seen["Compression"] {
		ni.Compression = "bzip2"
	}
	return ni, nil
}

func (ni *NarInfo) set(key, value string) error {
	var err error
	switch key {
	case "StorePath":
		ni.StorePath, err = storepath.Parse(value)
	case "URL":
		if value == "" {
			return errors.New("empty")
		}
		ni.URL = value
	case "Compression":
		if value == "" {
			return errors.New("empty")
		}
		ni.Compression = value
	case "FileHash":
		var h Hash
		h, err = ParseHash(value)
		ni.FileHash = &h
	case "FileSize":
		ni.FileSize, err = strconv.ParseUint(value, 10, 64)
	case "NarHash":
		ni.NarHash, err = ParseHash(value)
	case "NarSize":
		ni.NarSize, err = strconv.ParseUint(value, 10, 64)
		if err == nil && ni.NarSize == 0 {
			err = errors.New("zero")
		}
	case "References":
		for _, f := range strings.Fields(value) {
			p, err := storepath.ParseBase(f)
			if err != nil {
				return err
			}
			ni.References = append(ni.References, p)
		}
	case "Deriver":
		if value != "unknown-deriver" {
			var p storepath.Path
			if p, err = storepath.ParseBase(value); err == nil {
				ni.Deriver = p.Base()
			}
		}
	case "System":
		ni.System = value
	case "Sig":
		if _, _, ok := strings.Cut(value, ":"); !ok {
			return fmt.Errorf("%q is not keyname:signature", value)
		}
		ni.Sigs = append(ni.Sigs, value)
	case "CA":
		ni.CA = value
	}
	return err
}

// Fingerprint is the string Nix signs:
// "1;<store path>;sha256:<nix32 nar hash>;<nar size>;<sorted comma-separated reference paths>".
func (ni *NarInfo) Fingerprint() string {
	refs := make([]string, len(ni.References))
	for i, r := range ni.References {
		refs[i] = r.Absolute()
	}
	slices.Sort(refs)
	return "1;" + ni.StorePath.Absolute() + ";" + ni.NarHash.NixString() + ";" +
		strconv.FormatUint(ni.NarSize, 10) + ";" + strings.Join(refs, ",")
}

// CacheInfo is a parsed nix-cache-info file.
type CacheInfo struct {
	StoreDir      string
	WantMassQuery bool
	Priority      int // 50 when absent, Nix's default for binary caches
}

// ParseCacheInfo reads nix-cache-info; unknown keys are ignored.
func ParseCacheInfo(r io.Reader) (*CacheInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return nil, err
	}
	ci := &CacheInfo{Priority: 50}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch key {
		case "StoreDir":
			ci.StoreDir = value
		case "WantMassQuery":
			ci.WantMassQuery = value == "1"
		case "Priority":
			if ci.Priority, err = strconv.Atoi(value); err != nil {
				return nil, fmt.Errorf("nix-cache-info: Priority %q: %w", value, err)
			}
		}
	}
	return ci, nil
}

// String renders ni in the format Nix writes, so caches written by
// storepkg (tests, benchmarks) read like Nix's own.
func (ni *NarInfo) String() string {
	var b strings.Builder
	line := func(k, v string) { b.WriteString(k + ": " + v + "\n") }
	line("StorePath", ni.StorePath.Absolute())
	line("URL", ni.URL)
	line("Compression", ni.Compression)
	if ni.FileHash != nil {
		line("FileHash", ni.FileHash.NixString())
	}
	if ni.FileSize > 0 {
		line("FileSize", strconv.FormatUint(ni.FileSize, 10))
	}
	line("NarHash", ni.NarHash.NixString())
	line("NarSize", strconv.FormatUint(ni.NarSize, 10))
	refs := make([]string, len(ni.References))
	for i, r := range ni.References {
		refs[i] = r.Base()
	}
	line("References", strings.Join(refs, " "))
	if ni.Deriver != "" {
		line("Deriver", ni.Deriver)
	}
	if ni.System != "" {
		line("System", ni.System)
	}
	for _, s := range ni.Sigs {
		line("Sig", s)
	}
	if ni.CA != "" {
		line("CA", ni.CA)
	}
	return b.String()
}
