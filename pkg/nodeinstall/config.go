package nodeinstall

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// The plugin IDs under which containerd's CRI plugin keeps its runtimes.
const (
	criPluginV2 = "io.containerd.grpc.v1.cri"    // config version 2 (containerd 1.x and 2.x)
	criPluginV3 = "io.containerd.cri.v1.runtime" // config version 3 and 4 (containerd 2.x)
)

// RuntimeName is the CRI runtime handler we register (RuntimeClass handler).
const RuntimeName = "storepkg"

// RuntimeType is the shim's runtime type.
const RuntimeType = "io.containerd.storepkg.v1"

// maxConfigVersion is the newest containerd config version we know the
// layout of (containerd 2.3 writes version 4).
const maxConfigVersion = 4

// criPlugin returns the plugin ID holding `containerd.runtimes` in a
// config file of the given version.
func criPlugin(version int) string {
	if version >= 3 {
		return criPluginV3
	}
	return criPluginV2
}

// configFile is one TOML file containerd loads.
type configFile struct {
	Path    string // host path
	Data    []byte // as on disk
	Doc     map[string]any
	Version int // 0 if absent
	Imports []string
}

func parseConfig(path string, data []byte) (*configFile, error) {
	cf := &configFile{Path: path, Data: data, Doc: map[string]any{}}
	if err := toml.Unmarshal(data, &cf.Doc); err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", path, err)
	}
	switch v := cf.Doc["version"].(type) {
	case nil:
	case int64:
		cf.Version = int(v)
	default:
		return nil, fmt.Errorf("containerd config %s: version is %T, not an integer", path, v)
	}
	if raw, ok := cf.Doc["imports"]; ok {
		list, ok := raw.([]any)
		if !ok {
			return nil, fmt.Errorf("containerd config %s: imports is %T, not a list", path, raw)
		}
		for _, x := range list {
			s, ok := x.(string)
			if !ok {
				return nil, fmt.Errorf("containerd config %s: imports holds a %T", path, x)
			}
			cf.Imports = append(cf.Imports, s)
		}
	}
	return cf, nil
}

// criContainerd returns the `containerd` table of the CRI plugin in this
// file (nil if the file does not define it).
func (cf *configFile) criContainerd() map[string]any {
	return getTable(cf.Doc, "plugins", criPlugin(cf.version()), "containerd")
}

// definesCRI reports whether the file defines the CRI plugin's table.
func (cf *configFile) definesCRI() bool {
	return getTable(cf.Doc, "plugins", criPlugin(cf.version())) != nil
}

// version is the file's version as containerd reads it for plugin names:
// an imported file without `version` keeps plugin names of version 1,
// but in practice drop-ins without version are written against version 2.
func (cf *configFile) version() int {
	if cf.Version == 0 {
		return 2
	}
	return cf.Version
}

// runtime returns the file's table for the named runtime, under either
// plugin ID (a version-less drop-in may use the version 2 one, which
// containerd 2.x migrates).
func (cf *configFile) runtime(name string) map[string]any {
	if t := getTable(cf.criContainerd(), "runtimes", name); t != nil {
		return t
	}
	for _, id := range []string{criPluginV2, criPluginV3} {
		if t := getTable(cf.Doc, "plugins", id, "containerd", "runtimes", name); t != nil {
			return t
		}
	}
	return nil
}

func getTable(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		if m == nil {
			return nil
		}
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil
		}
		m = next
	}
	return m
}

// hasKeys reports whether the document sets anything at all (a file of
// comments only is the same to containerd as no file).
func (cf *configFile) hasKeys() bool { return len(cf.Doc) > 0 }

// resolveImports mirrors containerd's: relative to the importing file's
// directory, globs expanded (sorted), everything on the host.
func resolveImports(h hostFS, parent string, imports []string) ([]string, error) {
	var out []string
	for _, p := range imports {
		p = filepath.Clean(p)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(parent), p)
		}
		if !strings.Contains(p, "*") {
			out = append(out, p)
			continue
		}
		matches, err := h.glob(p)
		if err != nil {
			return nil, fmt.Errorf("containerd config %s: import %q: %w", parent, p, err)
		}
		out = append(out, matches...)
	}
	return out, nil
}

// loadImports reads every file containerd would import after the root, in
// containerd's order (breadth first, each file once). A missing import is
// an error for containerd too, except for the paths in optional (our own
// drop-in, which may not exist yet or be gone already).
func loadImports(h hostFS, root *configFile, optional []string) ([]*configFile, error) {
	loaded := map[string]bool{root.Path: true}
	pending, err := resolveImports(h, root.Path, root.Imports)
	if err != nil {
		return nil, err
	}
	var out []*configFile
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if loaded[p] {
			continue
		}
		loaded[p] = true
		data, err := h.readFile(p)
		if err != nil && errors.Is(err, fs.ErrNotExist) && slices.Contains(optional, p) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("containerd config %s imports %s: %w", root.Path, p, err)
		}
		cf, err := parseConfig(p, data)
		if err != nil {
			return nil, err
		}
		out = append(out, cf)
		more, err := resolveImports(h, p, cf.Imports)
		if err != nil {
			return nil, err
		}
		pending = append(pending, more...)
	}
	return out, nil
}

// effectiveCRI returns the CRI plugin's `containerd` table as containerd
// would see it after merging the files in order: containerd 2.x merges
// tables key by key; 1.x replaces the whole plugin table with the last
// file's that defines it.
func effectiveCRI(files []*configFile, deepMerge bool) map[string]any {
	var eff map[string]any
	for _, f := range files {
		if !f.definesCRI() {
			continue
		}
		t := f.criContainerd()
		if !deepMerge {
			eff = t
			continue
		}
		if eff == nil {
			eff = map[string]any{}
		}
		mergeInto(eff, t)
	}
	return eff
}

func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeInto(dm, sm)
				continue
			}
			cp := map[string]any{}
			mergeInto(cp, sm)
			dst[k] = cp
			continue
		}
		dst[k] = v
	}
}

// disablesCRI reports whether a file disables the CRI plugin.
func (cf *configFile) disablesCRI() bool {
	list, _ := cf.Doc["disabled_plugins"].([]any)
	for _, x := range list {
		switch x {
		case "cri", criPluginV2, criPluginV3:
			return true
		}
	}
	return false
}

// grpcAddress returns the file's [grpc] address, if set.
func (cf *configFile) grpcAddress() string {
	s, _ := getTable(cf.Doc, "grpc")["address"].(string)
	return s
}
