package nodeinstall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Flavor is how containerd is run and configured on the node.
type Flavor string

// The layouts we know.
const (
	FlavorContainerd Flavor = "containerd" // containerd's own config file (kubeadm, kind, EKS, GKE, ...)
	FlavorK3s        Flavor = "k3s"        // k3s renders containerd's config from a template
	FlavorRKE2       Flavor = "rke2"       // rke2: same mechanism, its own directory
)

// Default host paths.
const (
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	DefaultInstallDir       = "/opt/storepkg/bin"
	DefaultNodeConfig       = "/etc/storepkg/config.toml"
	ShimBinary              = "containerd-shim-storepkg-v1"
	CLIBinary               = "storepkg"
	k3sDir                  = "/var/lib/rancher/k3s/agent/etc/containerd"
	rke2Dir                 = "/var/lib/rancher/rke2/agent/etc/containerd"
	backupSuffix            = ".storepkg-backup"
	dropInName              = "storepkg.toml"
)

// Options says where things are on the host and what to install. Paths
// are host paths; HostRoot is where the host's / is mounted here.
type Options struct {
	HostRoot string // default "/"

	// ContainerdConfig is containerd's root config file; empty: detect
	// (k3s, rke2, else /etc/containerd/config.toml). For k3s and rke2 it
	// is the config.toml they render.
	ContainerdConfig string
	// Flavor overrides the detected layout.
	Flavor Flavor
	// ContainerdVersion ("1.7.22", "2.1.0") overrides asking the host's
	// `containerd --version`; it matters only for a version 2 config.
	ContainerdVersion string
	// Runner runs commands on the host (containerd --version, restarts).
	Runner Runner

	// The node configuration the shim reads. Empty lists leave the
	// shim's defaults (cache.nixos.org and its key).
	Substituters      []string
	TrustedPublicKeys []string
	StoreRoot         string
	NetrcFile         string
	MaxJobs           int
	FetchTimeout      string

	// SourceDir holds the binaries to copy (storepkg and
	// containerd-shim-storepkg-v1); empty: copy nothing.
	SourceDir  string
	InstallDir string // default /opt/storepkg/bin
	NodeConfig string // default /etc/storepkg/config.toml
}

func (o Options) withDefaults() Options {
	if o.HostRoot == "" {
		o.HostRoot = "/"
	}
	if o.InstallDir == "" {
		o.InstallDir = DefaultInstallDir
	}
	if o.NodeConfig == "" {
		o.NodeConfig = DefaultNodeConfig
	}
	return o
}

// hostFS reaches the host's files, every path resolved inside HostRoot.
func (o Options) hostFS() hostFS { return newHostFS(o.HostRoot) }

// Detection is what we found on the node.
type Detection struct {
	Flavor        Flavor
	ConfigPath    string // containerd's root config (k3s/rke2: the rendered one)
	ConfigLink    string // the target of ConfigPath as written, when it is a symbolic link
	ConfigExists  bool
	ConfigVersion int // 0: no file, or a file without keys

	ContainerdVersion string // "" when unknown
	ContainerdMajor   int    // 0 when unknown
	VersionError      error  // why the version is unknown

	Imports []string // files containerd imports, in load order (host paths)

	TemplateDir string // k3s/rke2: where the templates are
	Template    string // k3s/rke2: the template k3s uses now ("" for its built-in one)

	DefaultRuntime string // CRI's default runtime name
	SystemdCgroup  bool   // from that runtime's options
	BinaryName     string // from that runtime's options
	Socket         string // containerd's gRPC socket (host path)

	// runcDefaults is containerd 1.x's built-in table for the default
	// runtime, from the host's `containerd config default`, when the
	// configuration relies on it (see stratInPlace).
	runcDefaults map[string]any

	root        *configFile   // the root config without our edits
	rootRaw     []byte        // the root config as on disk (nil if none)
	imports     []*configFile // imported files except ours
	template    []byte        // the active template as on disk
	ourDropIns  []string      // drop-in paths we may have written
	versionText string
}

// DeepMerge reports whether containerd merges imported plugin tables key by
// key (2.x) rather than replacing them whole (1.x).
func (d *Detection) DeepMerge() bool {
	switch {
	case d.Flavor != FlavorContainerd:
		// k3s and rke2 have rendered an import line only since they ship
		// containerd 2; without one we never use a drop-in.
		return true
	case d.ConfigVersion >= 3:
		return true
	default:
		return d.ContainerdMajor >= 2
	}
}

// Detect inspects the host.
func Detect(ctx context.Context, o Options) (*Detection, error) {
	o = o.withDefaults()
	d := &Detection{Flavor: o.Flavor, ConfigPath: o.ContainerdConfig}
	if err := d.findLayout(o); err != nil {
		return nil, err
	}
	h := o.hostFS()
	if st, err := h.lstat(d.ConfigPath); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		d.ConfigLink, _ = h.readlink(d.ConfigPath)
	}
	raw, err := h.readFile(d.ConfigPath)
	switch {
	case err == nil:
		d.ConfigExists = true
		d.rootRaw = raw
	case errors.Is(err, fs.ErrNotExist):
		if d.Flavor != FlavorContainerd {
			return nil, fmt.Errorf("%s has not rendered containerd's config yet (%s is missing): start %s once first", d.Flavor, d.ConfigPath, d.Flavor)
		}
	default:
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	if d.TemplateDir != "" {
		for _, name := range []string{"config-v3.toml.tmpl", "config.toml.tmpl"} {
			p := filepath.Join(d.TemplateDir, name)
			b, err := h.readFile(p)
			if err == nil {
				d.Template, d.template = p, b
				break
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s template: %w", d.Flavor, err)
			}
		}
	}
	// Our own block (in the root file, or rendered from a k3s template)
	// is not the operator's configuration.
	clean, _, err := stripBlock(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.ConfigPath, err)
	}
	root, err := parseConfig(d.ConfigPath, clean)
	if err != nil {
		return nil, err
	}
	d.root = root
	if root.hasKeys() {
		d.ConfigVersion = root.Version
		if d.ConfigVersion == 0 {
			d.ConfigVersion = 1
		}
	}
	d.ourDropIns = d.dropInCandidates()
	imports, err := loadImports(h, root, d.ourDropIns)
	if err != nil {
		return nil, err
	}
	for _, f := range imports {
		d.Imports = append(d.Imports, f.Path)
		if isOurs(f.Data) {
			continue
		}
		d.imports = append(d.imports, f)
	}

	if d.Flavor == FlavorContainerd && d.ConfigVersion <= 2 {
		d.detectVersion(ctx, o)
	}

	files := append([]*configFile{root}, d.imports...)
	eff := effectiveCRI(files, d.DeepMerge())
	d.DefaultRuntime, _ = eff["default_runtime_name"].(string)
	if d.DefaultRuntime == "" {
		d.DefaultRuntime = "runc"
	}
	opts := getTable(eff, "runtimes", d.DefaultRuntime, "options")
	d.SystemdCgroup, _ = opts["SystemdCgroup"].(bool)
	d.BinaryName, _ = opts["BinaryName"].(string)
	if !d.DeepMerge() && eff["runtimes"] == nil && o.Runner != nil {
		// containerd 1.x drops its built-in runtimes once a file names
		// one: keep what it has now by naming it with its defaults.
		if out, err := o.Runner.Run(ctx, "containerd", "config", "default"); err == nil {
			if def, err := parseConfig("containerd config default", out); err == nil {
				d.runcDefaults = getTable(def.Doc, "plugins", criPluginV2, "containerd", "runtimes", d.DefaultRuntime)
			}
		}
	}

	d.Socket = root.grpcAddress()
	for _, f := range d.imports {
		if a := f.grpcAddress(); a != "" {
			d.Socket = a
		}
	}
	if d.Socket == "" {
		d.Socket = "/run/containerd/containerd.sock"
		if d.Flavor != FlavorContainerd {
			d.Socket = "/run/k3s/containerd/containerd.sock"
		}
	}
	return d, nil
}

func (d *Detection) findLayout(o Options) error {
	if d.ConfigPath != "" {
		if !filepath.IsAbs(d.ConfigPath) {
			return fmt.Errorf("containerd config %q: want an absolute host path", d.ConfigPath)
		}
		d.ConfigPath = filepath.Clean(d.ConfigPath)
		if d.Flavor == "" {
			switch {
			case strings.HasPrefix(d.ConfigPath, k3sDir+"/"):
				d.Flavor = FlavorK3s
			case strings.HasPrefix(d.ConfigPath, rke2Dir+"/"):
				d.Flavor = FlavorRKE2
			default:
				d.Flavor = FlavorContainerd
			}
		}
	}
	if d.Flavor == "" {
		var found []Flavor
		for _, f := range []struct {
			flavor Flavor
			dir    string
		}{{FlavorRKE2, rke2Dir}, {FlavorK3s, k3sDir}} {
			if o.hostFS().exists(filepath.Join(f.dir, "config.toml")) {
				found = append(found, f.flavor)
			}
		}
		switch len(found) {
		case 0:
			d.Flavor = FlavorContainerd
		case 1:
			d.Flavor = found[0]
		default:
			return fmt.Errorf("both k3s and rke2 have a containerd config on this node: say which with --containerd-config")
		}
	}
	switch d.Flavor {
	case FlavorContainerd:
		if d.ConfigPath == "" {
			d.ConfigPath = DefaultContainerdConfig
		}
	case FlavorK3s, FlavorRKE2:
		dir := k3sDir
		if d.Flavor == FlavorRKE2 {
			dir = rke2Dir
		}
		if d.ConfigPath == "" {
			d.ConfigPath = filepath.Join(dir, "config.toml")
		}
		d.TemplateDir = filepath.Dir(d.ConfigPath)
	default:
		return fmt.Errorf("unknown flavor %q (want containerd, k3s or rke2)", d.Flavor)
	}
	return nil
}

func (d *Detection) detectVersion(ctx context.Context, o Options) {
	out := o.ContainerdVersion
	if out == "" {
		if o.Runner == nil {
			d.VersionError = errors.New("no way to run commands on the host")
			return
		}
		b, err := o.Runner.Run(ctx, "containerd", "--version")
		if err != nil {
			d.VersionError = err
			return
		}
		out = string(b)
	}
	d.versionText = strings.TrimSpace(out)
	v, major, err := ParseContainerdVersion(out)
	if err != nil {
		d.VersionError = err
		return
	}
	d.ContainerdVersion, d.ContainerdMajor = v, major
}

// dropInCandidates lists every path where a drop-in of ours may be: where
// the root's import globs would pick one up, conf.d next to the root file,
// and the k3s/rke2 drop-in directories.
func (d *Detection) dropInCandidates() []string {
	var out []string
	add := func(p string) {
		for _, q := range out {
			if q == p {
				return
			}
		}
		out = append(out, p)
	}
	for _, imp := range d.root.Imports {
		p := filepath.Clean(imp)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(d.ConfigPath), p)
		}
		if c := dropInFor(p); c != "" {
			add(c)
		}
	}
	add(filepath.Join(filepath.Dir(d.ConfigPath), "conf.d", dropInName))
	if d.TemplateDir != "" {
		add(filepath.Join(d.TemplateDir, "config-v3.toml.d", dropInName))
		add(filepath.Join(d.TemplateDir, "config.toml.d", dropInName))
	}
	return out
}

// dropInFor returns the file name we would use so that the import pattern
// p (an absolute host path, maybe a glob) loads it; "" if none fits.
func dropInFor(p string) string {
	dir, base := filepath.Dir(p), filepath.Base(p)
	if strings.ContainsAny(dir, "*?[") {
		return ""
	}
	if !strings.ContainsAny(base, "*?[") {
		if base == dropInName {
			return p
		}
		return ""
	}
	names := []string{dropInName}
	if strings.HasPrefix(base, "*") && !strings.ContainsAny(base[1:], "*?[") {
		names = append(names, "storepkg"+base[1:])
	}
	for _, n := range names {
		if ok, _ := filepath.Match(base, n); ok {
			return filepath.Join(dir, n)
		}
	}
	return ""
}

// isOurs reports whether a whole file was written by us.
func isOurs(data []byte) bool {
	return strings.HasPrefix(string(data), ownedHeader)
}

// String summarises the detection for people.
func (d *Detection) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "layout %s, containerd config %s", d.Flavor, d.ConfigPath)
	if d.ConfigLink != "" {
		fmt.Fprintf(&b, " -> %s", d.ConfigLink)
	}
	switch {
	case !d.ConfigExists:
		b.WriteString(" (absent)")
	case d.ConfigVersion == 0:
		b.WriteString(" (no settings)")
	default:
		fmt.Fprintf(&b, " (version %d)", d.ConfigVersion)
	}
	switch {
	case d.ContainerdVersion != "":
		fmt.Fprintf(&b, ", containerd %s", d.ContainerdVersion)
	case d.VersionError != nil:
		fmt.Fprintf(&b, ", containerd version unknown (%v)", d.VersionError)
	}
	if d.Template != "" {
		fmt.Fprintf(&b, ", template %s", d.Template)
	}
	fmt.Fprintf(&b, ", default runtime %s (SystemdCgroup=%t", d.DefaultRuntime, d.SystemdCgroup)
	if d.BinaryName != "" {
		fmt.Fprintf(&b, ", BinaryName=%s", d.BinaryName)
	}
	b.WriteString(")")
	return b.String()
}
