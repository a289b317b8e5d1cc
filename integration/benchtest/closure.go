package benchtest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/storepkg/storepkg/pkg/narinfo"
)

// Cache is the narinfos of a file binary cache, by store path base.
type Cache map[string]*narinfo.NarInfo

// LoadCache reads every narinfo of the binary cache directories.
func LoadCache(dirs ...string) (Cache, error) {
	c := Cache{}
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.narinfo"))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			ni, err := narinfo.ParseBytes(data)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			c[ni.StorePath.Base()] = ni
		}
	}
	return c, nil
}

// Closure returns the bases of roots (absolute store paths or bases) and
// everything they refer to, sorted.
func (c Cache) Closure(roots ...string) ([]string, error) {
	seen := map[string]bool{}
	var walk func(base string) error
	walk = func(base string) error {
		if seen[base] {
			return nil
		}
		ni, ok := c[base]
		if !ok {
			return fmt.Errorf("no narinfo for %s", base)
		}
		seen[base] = true
		for _, r := range ni.References {
			if err := walk(r.Base()); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		if err := walk(filepath.Base(r)); err != nil {
			return nil, err
		}
	}
	out := make([]string, 0, len(seen))
	for b := range seen {
		out = append(out, b)
	}
	sort.Strings(out)
	return out, nil
}

// FileSize sums the compressed NAR sizes of bases.
func (c Cache) FileSize(bases []string) int64 {
	var n int64
	for _, b := range bases {
		if ni := c[b]; ni != nil {
			n += int64(ni.FileSize)
		}
	}
	return n
}

// NarSize sums the NAR sizes of bases.
func (c Cache) NarSize(bases []string) int64 {
	var n int64
	for _, b := range bases {
		if ni := c[b]; ni != nil {
			n += int64(ni.NarSize)
		}
	}
	return n
}

// NARURL returns the URL path ("/nar/…") of base's NAR.
func (c Cache) NARURL(base string) string {
	if ni := c[base]; ni != nil {
		return "/" + strings.TrimPrefix(ni.URL, "/")
	}
	return ""
}

// Find returns the base of the one store path in the cache whose name
// (the part after the hash) is name.
func (c Cache) Find(name string) (string, error) {
	var found []string
	for b := range c {
		if len(b) > 33 && b[33:] == name {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("cache has %d store paths named %q", len(found), name)
	}
	return found[0], nil
}
