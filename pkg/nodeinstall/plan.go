package nodeinstall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// ChangeKind is what a Change does to a file.
type ChangeKind string

// The kinds of change.
const (
	Create    ChangeKind = "create"
	Update    ChangeKind = "update"
	Remove    ChangeKind = "remove"
	RemoveDir ChangeKind = "rmdir" // only if empty
)

// Change is one file operation on the host.
type Change struct {
	Kind ChangeKind
	Path string // host path, where the file really is (no symbolic link in it)
	// Via, for people, is the path the change was planned for when the
	// file is elsewhere: a symbolic link and its target, or a path
	// through linked directories.
	Via  string
	Data []byte // the new content (create, update)
	Old  []byte // the current content (update, remove), for showing a diff
	Mode fs.FileMode
	Why  string
	// Binary content is not shown.
	Binary bool
	// Config: containerd reads this file, so it takes a restart.
	Config bool
}

// Plan is what install or uninstall will do. An empty plan means the node
// is already as wanted.
type Plan struct {
	Detection *Detection
	Changes   []Change
	Notes     []string
	opts      Options
	fs        hostFS
}

// RestartNeeded reports whether containerd must restart to see the plan:
// its configuration changes (the shim's own config and binary do not
// need one: the shim reads them at each container create).
func (p *Plan) RestartNeeded() bool {
	for _, c := range p.Changes {
		if c.Config {
			return true
		}
	}
	return false
}

// strategy is where the runtime entry goes.
type strategy int

const (
	stratDropIn       strategy = iota // a drop-in the root already imports (glob)
	stratDropInImport                 // a drop-in, plus its path in the root's imports
	stratInPlace                      // a marked block in the root file
	stratTemplate                     // a marked block in the k3s/rke2 template
)

func (s strategy) String() string {
	return [...]string{"drop-in", "drop-in added to imports", "block in the root config", "block in the k3s/rke2 template"}[s]
}

// PlanInstall works out what `storepkg node install` changes on the node.
func PlanInstall(ctx context.Context, o Options) (*Plan, error) {
	o = o.withDefaults()
	d, err := Detect(ctx, o)
	if err != nil {
		return nil, err
	}
	p := &Plan{Detection: d, opts: o, fs: o.hostFS()}
	if err := d.refuse(); err != nil {
		return nil, err
	}

	rootBase, err := stripRoot(d.rootRaw, d.ourDropIns)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.ConfigPath, err)
	}
	base, err := parseConfig(d.ConfigPath, rootBase)
	if err != nil {
		return nil, err
	}
	strat, dropIn := d.choose(base)
	p.Notes = append(p.Notes, "runtime entry: "+strat.String())
	if err := d.conflicts(strat); err != nil {
		return nil, err
	}

	// The shim and the CLI, then the node config: containerd must never
	// name a file that is not there yet.
	if err := p.planBinaries(); err != nil {
		return nil, err
	}
	nodeCfg, err := nodeConfig(o, d)
	if err != nil {
		return nil, err
	}
	if cur, err := p.fs.readFile(o.NodeConfig); err == nil && !isOurs(cur) {
		p.Notes = append(p.Notes, o.NodeConfig+" exists and was not written by storepkg: replacing it (its settings belong in install's flags)")
	}
	if err := p.want(o.NodeConfig, nodeCfg, 0o644, false, "storepkg node config (the runtime's ConfigPath)"); err != nil {
		return nil, err
	}

	shim := filepath.Join(o.InstallDir, ShimBinary)
	version := d.ConfigVersion
	switch strat {
	case stratDropIn, stratDropInImport:
		if cur, err := p.fs.readFile(dropIn); err == nil && !isOurs(cur) {
			return nil, fmt.Errorf("%s exists and was not written by storepkg: refusing to overwrite it", dropIn)
		}
		body := ownedHeader + "\n" + fmt.Sprintf("version = %d\n\n", version) + runtimeTable(version, shim, o.NodeConfig)
		if err := p.want(dropIn, []byte(body), 0o644, true, "containerd drop-in with the storepkg runtime"); err != nil {
			return nil, err
		}
	}
	// Drop-ins of ours elsewhere (an older layout) go.
	for _, c := range d.ourDropIns {
		if c != dropIn || (strat != stratDropIn && strat != stratDropInImport) {
			if err := p.removeOurs(c, "storepkg drop-in no longer used"); err != nil {
				return nil, err
			}
		}
	}

	switch d.Flavor {
	case FlavorContainerd:
		var desired []byte
		switch strat {
		case stratInPlace:
			var body strings.Builder
			if base.Version == 0 {
				v := 2
				if d.ContainerdMajor >= 2 {
					v = 3
				}
				version = v
				fmt.Fprintf(&body, "version = %d\n\n", v)
			}
			if !d.DeepMerge() && effectiveCRI(append([]*configFile{base}, d.imports...), false)["runtimes"] == nil {
				def := d.runcDefaults
				if def == nil {
					def = map[string]any{"runtime_type": "io.containerd.runc.v2"}
				}
				body.WriteString(renderTable(runtimesKey(version)+"."+tomlKey(d.DefaultRuntime), def))
				body.WriteString("\n")
				p.Notes = append(p.Notes, fmt.Sprintf("containerd 1.x drops its built-in %q runtime once a config names any runtime: naming it explicitly, with containerd's defaults", d.DefaultRuntime))
			}
			body.WriteString(runtimeTable(version, shim, o.NodeConfig))
			desired = appendBlock(rootBase, body.String())
		case stratDropInImport:
			if desired, err = addImport(rootBase, dropIn); err != nil {
				return nil, fmt.Errorf("%s: %w", d.ConfigPath, err)
			}
		default:
			desired = rootBase
		}
		if err := p.planEdit(d.ConfigPath, d.rootRaw, d.ConfigExists, rootBase, desired, "containerd root config"); err != nil {
			return nil, rootConfigHelp(err)
		}
	default:
		if err := p.planTemplate(strat, shim); err != nil {
			return nil, err
		}
	}
	if err := p.planCreatedDirs(); err != nil {
		return nil, err
	}
	return p, nil
}

// stateFile lists the directories install created, so that uninstall can
// remove them (when empty) and leave the host as it found it.
func (o Options) stateFile() string {
	return filepath.Join(filepath.Dir(o.NodeConfig), "created-dirs")
}

// createdDirs reads the state file.
func (o Options) createdDirs() []string {
	b, err := o.hostFS().readFile(o.stateFile())
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "/") {
			out = append(out, filepath.Clean(l))
		}
	}
	return out
}

// planCreatedDirs records the directories this plan creates (and those
// an earlier install created), first, so a failed install can be undone.
func (p *Plan) planCreatedDirs() error {
	o := p.opts
	dirs := o.createdDirs()
	add := func(path string) {
		for dir := filepath.Dir(path); dir != "/" && dir != "." && !p.fs.exists(dir); dir = filepath.Dir(dir) {
			if !slices.Contains(dirs, dir) {
				dirs = append(dirs, dir)
			}
		}
	}
	add(o.stateFile())
	for _, c := range p.Changes {
		if c.Kind == Create {
			add(c.Path)
		}
	}
	slices.Sort(dirs)
	body := ownedHeader + "\n# Directories storepkg node install created; uninstall removes them when empty.\n" + strings.Join(dirs, "\n") + "\n"
	saved := p.Changes
	p.Changes = nil
	err := p.want(o.stateFile(), []byte(body), 0o644, false, "directories created by install")
	p.Changes = append(p.Changes, saved...)
	return err
}

// refuse rejects configurations we will not touch.
func (d *Detection) refuse() error {
	if d.ConfigVersion == 1 {
		return fmt.Errorf("%s is a version 1 containerd config (it has no `version = 2` or later): "+
			"containerd 1.7 deprecated that format and 2.0 removed it, and its plugin names differ. "+
			"Migrate it first (containerd 2.x: `containerd config migrate > new.toml`; 1.x: start from "+
			"`containerd config default`, which writes version 2), then run install again", d.ConfigPath)
	}
	if d.ConfigVersion > maxConfigVersion {
		return fmt.Errorf("%s has config version %d; storepkg knows versions 2 to %d", d.ConfigPath, d.ConfigVersion, maxConfigVersion)
	}
	for _, f := range append([]*configFile{d.root}, d.imports...) {
		if f.disablesCRI() {
			return fmt.Errorf("%s disables containerd's CRI plugin (disabled_plugins): this containerd does not serve Kubernetes", f.Path)
		}
	}
	if d.Flavor == FlavorContainerd && d.ConfigVersion == 2 && d.ContainerdMajor == 1 && d.ContainerdVersion != "" &&
		strings.HasPrefix(strings.TrimPrefix(d.ContainerdVersion, "v"), "1.") {
		var minor int
		if _, err := fmt.Sscanf(strings.TrimPrefix(d.ContainerdVersion, "v"), "1.%d", &minor); err == nil && minor < 7 {
			return fmt.Errorf("containerd %s: storepkg needs containerd 1.7 or 2.x", d.ContainerdVersion)
		}
	}
	return nil
}

// choose picks where the runtime entry goes, given the root config
// without our edits.
func (d *Detection) choose(base *configFile) (strategy, string) {
	for _, imp := range base.Imports {
		p := filepath.Clean(imp)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(d.ConfigPath), p)
		}
		if c := dropInFor(p); c != "" && strings.ContainsAny(filepath.Base(p), "*?[") {
			if d.Flavor != FlavorContainerd || d.DeepMerge() {
				return stratDropIn, c
			}
		}
	}
	switch {
	case d.Flavor != FlavorContainerd:
		return stratTemplate, ""
	case d.ConfigVersion >= 2 && d.DeepMerge():
		return stratDropInImport, filepath.Join(filepath.Dir(d.ConfigPath), "conf.d", dropInName)
	}
	return stratInPlace, ""
}

// conflicts finds other definitions of our runtime.
func (d *Detection) conflicts(strat strategy) error {
	var errs []string
	for _, f := range append([]*configFile{d.root}, d.imports...) {
		if f.runtime(RuntimeName) != nil {
			errs = append(errs, fmt.Sprintf("%s defines runtimes.%s", f.Path, RuntimeName))
		}
	}
	if strat == stratInPlace && !d.DeepMerge() {
		for _, f := range d.imports {
			if f.definesCRI() {
				errs = append(errs, fmt.Sprintf("%s (imported) defines the CRI plugin table, which containerd 1.x puts in place of the root file's whole table, runtimes and all; add the storepkg runtime there yourself or move that file's CRI settings into %s", f.Path, d.ConfigPath))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("refusing to add the %s runtime: containerd merges later files over earlier ones, so whichever definition it reads last silently wins: %s", RuntimeName, strings.Join(errs, "; "))
	}
	return nil
}

// runtimesKey is the TOML key of the CRI runtimes table for a config version.
func runtimesKey(version int) string {
	if version >= 3 {
		return "plugins.'" + criPlugin(version) + "'.containerd.runtimes"
	}
	return `plugins."` + criPlugin(version) + `".containerd.runtimes`
}

// runtimeTable renders our runtime's TOML table for a config version.
func runtimeTable(version int, shim, nodeConfig string) string {
	key := runtimesKey(version) + "." + RuntimeName
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]\n", key)
	fmt.Fprintf(&b, "  runtime_type = %s\n", tomlString(RuntimeType))
	fmt.Fprintf(&b, "  runtime_path = %s\n", tomlString(shim))
	fmt.Fprintf(&b, "  pod_annotations = %s\n", tomlStrings([]string{"storepkg.dev/*"}))
	fmt.Fprintf(&b, "  [%s.options]\n", key)
	fmt.Fprintf(&b, "    ConfigPath = %s\n", tomlString(nodeConfig))
	return b.String()
}

// nodeConfig renders the file the shim reads (pkg/shim.Config's keys).
func nodeConfig(o Options, d *Detection) ([]byte, error) {
	type cfg struct {
		Substituters      []string `toml:",omitempty"`
		TrustedPublicKeys []string `toml:",omitempty"`
		StoreRoot         string   `toml:",omitempty"`
		NetrcFile         string   `toml:",omitempty"`
		MaxJobs           int      `toml:",omitempty"`
		FetchTimeout      string   `toml:",omitempty"`
		BinaryName        string   `toml:",omitempty"`
		SystemdCgroup     bool
	}
	body, err := toml.Marshal(cfg{
		Substituters: o.Substituters, TrustedPublicKeys: o.TrustedPublicKeys,
		StoreRoot: o.StoreRoot, NetrcFile: o.NetrcFile, MaxJobs: o.MaxJobs, FetchTimeout: o.FetchTimeout,
		BinaryName: d.BinaryName, SystemdCgroup: d.SystemdCgroup,
	})
	if err != nil {
		return nil, err
	}
	head := ownedHeader + "\n" +
		"# containerd-shim-storepkg-v1 reads it at every container create (the storepkg\n" +
		"# runtime's options ConfigPath): edits apply to new containers, no restart needed.\n" +
		fmt.Sprintf("# SystemdCgroup and BinaryName come from containerd's %q runtime.\n", d.DefaultRuntime)
	return append([]byte(head), body...), nil
}

// want makes path hold data.
func (p *Plan) want(path string, data []byte, mode fs.FileMode, config bool, why string) error {
	cur, err := p.fs.readFile(path)
	switch {
	case err == nil && bytes.Equal(cur, data):
		return nil
	case err == nil:
		return p.add(Change{Kind: Update, Path: path, Data: data, Old: cur, Mode: mode, Why: why, Config: config})
	default:
		return p.add(Change{Kind: Create, Path: path, Data: data, Mode: mode, Why: why, Config: config})
	}
}

// removeOurs removes a whole file if we wrote it.
func (p *Plan) removeOurs(path, why string) error {
	cur, err := p.fs.readFile(path)
	if err != nil || !isOurs(cur) {
		return nil
	}
	return p.add(Change{Kind: Remove, Path: path, Old: cur, Why: why, Config: true})
}

// add appends a change of a file (see resolve).
func (p *Plan) add(c Change) error {
	c, err := p.resolve(c)
	if err != nil {
		return err
	}
	p.Changes = append(p.Changes, c)
	return nil
}

// resolve addresses a change of a file where the file really is on the
// host: every symbolic link in its path resolved inside the host root. A
// file that is a link is changed at its target and the link stays (a link
// whose target is missing is refused: nothing is created over it); a
// change where the host cannot be written is refused.
func (p *Plan) resolve(c Change) (Change, error) {
	real, link, err := p.fs.resolve(c.Path)
	if err != nil {
		return c, err
	}
	switch {
	case link != "":
		c.Via = c.Path + " -> " + link
	case real != c.Path:
		c.Via = c.Path
	}
	if why := p.fs.readOnly(real); why != "" {
		return c, &readOnlyError{path: c.Path, link: link, real: real, why: why}
	}
	c.Path = real
	return c, nil
}

// readOnlyError: a file the plan would change is where the host cannot be
// written.
type readOnlyError struct {
	path, link, real, why string
}

func (e *readOnlyError) Error() string {
	switch {
	case e.link != "":
		return fmt.Sprintf("%s is a symbolic link to %s: storepkg would edit the file where it lives, %s, but %s (and it never replaces a link)", e.path, e.link, e.real, e.why)
	case e.real != e.path:
		return fmt.Sprintf("%s is %s on the host (its directory is a symbolic link), where storepkg cannot write: %s", e.path, e.real, e.why)
	}
	return fmt.Sprintf("%s cannot be written: %s", e.path, e.why)
}

// rootConfigHelp says, when containerd's root config cannot be edited (a
// link into the Nix store: NixOS generates it), how to configure it.
func rootConfigHelp(err error) error {
	var ro *readOnlyError
	if !errors.As(err, &ro) {
		return err
	}
	return fmt.Errorf("%w. Configure containerd where its configuration is made (on NixOS: virtualisation.containerd.settings): "+
		"with containerd 2.x, have it import drop-ins, imports = [\"/etc/containerd/conf.d/*.toml\"], and run install again: "+
		"storepkg then writes its runtime into /etc/containerd/conf.d/storepkg.toml and leaves this file alone; "+
		"containerd 1.7 replaces imported plugin tables whole, so there the runtime must be in the root config: "+
		"start containerd with a config file that can be edited and name it with --containerd-config", err)
}

func (p *Plan) planBinaries() error {
	o := p.opts
	if o.SourceDir == "" {
		p.Notes = append(p.Notes, "binaries: not copied (no source directory)")
		return nil
	}
	for _, name := range []string{ShimBinary, CLIBinary} {
		src := filepath.Join(o.SourceDir, name)
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("%s must sit beside storepkg in the installer image: %w", name, err)
		}
		dst := filepath.Join(o.InstallDir, name)
		cur, err := p.fs.readFile(dst)
		switch {
		case err == nil && bytes.Equal(cur, data):
		case err == nil:
			err = p.add(Change{Kind: Update, Path: dst, Data: data, Mode: 0o755, Binary: true, Why: "from " + src})
		default:
			err = p.add(Change{Kind: Create, Path: dst, Data: data, Mode: 0o755, Binary: true, Why: "from " + src})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// stripRoot takes every edit of ours out of a root config.
func stripRoot(raw []byte, dropIns []string) ([]byte, error) {
	out, _, err := stripBlock(raw)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return out, nil
	}
	for _, c := range dropIns {
		if out, _, err = removeImport(out, c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// planEdit plans an in-place edit of a file we do not own: base is the
// file without our edits, desired the file as we want it. The file is
// backed up, once, before the first edit.
func (p *Plan) planEdit(path string, cur []byte, exists bool, base, desired []byte, what string) error {
	if exists && bytes.Equal(cur, desired) {
		return nil
	}
	if !exists && len(desired) == 0 {
		return nil
	}
	if exists {
		update, err := p.resolve(Change{Kind: Update, Path: path, Data: desired, Old: cur, Why: what, Config: true})
		if err != nil {
			return err
		}
		// The backup goes beside the file we edit: a link's target.
		backup := update.Path + backupSuffix
		ours := len(bytes.TrimSpace(base)) == 0 && bytes.HasPrefix(cur, []byte(blockBegin))
		if _, err := p.fs.stat(backup); errors.Is(err, fs.ErrNotExist) && !ours {
			err := p.add(Change{Kind: Create, Path: backup, Data: base, Mode: 0o600,
				Why: "backup of " + update.Path + " as it was before storepkg edited it"})
			if err != nil {
				return err
			}
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		p.Changes = append(p.Changes, update)
		return nil
	}
	return p.add(Change{Kind: Create, Path: path, Data: desired, Mode: 0o644, Why: what + " (there was none)", Config: true})
}

func (p *Plan) planTemplate(strat strategy, shim string) error {
	d := p.Detection
	tmpl := d.Template
	base, _, err := stripBlock(d.template)
	if err != nil {
		return fmt.Errorf("%s: %w", tmpl, err)
	}
	created := tmpl != "" && string(base) == k3sBase+"\n"
	if strat != stratTemplate {
		if tmpl == "" {
			return nil
		}
		if bytes.Equal(base, d.template) {
			return nil
		}
		if created && !p.hasBackup(tmpl) {
			return p.add(Change{Kind: Remove, Path: tmpl, Old: d.template, Why: "storepkg's template, no longer used", Config: true})
		}
		return p.planEdit(tmpl, d.template, true, base, base, d.Flavor.String()+" containerd template")
	}
	table := runtimeTable(d.ConfigVersion, shim, p.opts.NodeConfig)
	if tmpl == "" {
		name := "config.toml.tmpl"
		if d.ConfigVersion >= 3 {
			name = "config-v3.toml.tmpl"
		}
		tmpl = filepath.Join(d.TemplateDir, name)
		desired := appendBlock([]byte(k3sBase+"\n"), table)
		return p.add(Change{Kind: Create, Path: tmpl, Data: desired, Mode: 0o644, Config: true,
			Why: d.Flavor.String() + " containerd template: " + d.Flavor.String() + "'s own (" + k3sBase + ") plus the storepkg runtime"})
	}
	desired := appendBlock(base, table)
	if created {
		if bytes.Equal(desired, d.template) {
			return nil
		}
		return p.add(Change{Kind: Update, Path: tmpl, Data: desired, Old: d.template, Why: "storepkg's template", Config: true})
	}
	return p.planEdit(tmpl, d.template, true, base, desired, d.Flavor.String()+" containerd template")
}

// hasBackup reports whether the file at path (a link's target, when it
// is a link) has a storepkg backup beside it.
func (p *Plan) hasBackup(path string) bool {
	real, _, err := p.fs.resolve(path)
	return err == nil && p.fs.exists(real+backupSuffix)
}

// String returns the flavor's name.
func (f Flavor) String() string { return string(f) }

// PlanUninstall works out what `storepkg node uninstall` changes: it takes
// out every edit and file install made, whatever layout it used then.
func PlanUninstall(ctx context.Context, o Options) (*Plan, error) {
	o = o.withDefaults()
	d, err := Detect(ctx, o)
	if err != nil {
		return nil, err
	}
	p := &Plan{Detection: d, opts: o, fs: o.hostFS()}

	switch d.Flavor {
	case FlavorContainerd:
		if err := p.planRestore(d.ConfigPath, d.rootRaw, d.ConfigExists, func(b []byte) ([]byte, error) {
			return stripRoot(b, d.ourDropIns)
		}, ""); err != nil {
			return nil, err
		}
	default:
		if d.Template != "" {
			if err := p.planRestore(d.Template, d.template, true, func(b []byte) ([]byte, error) {
				out, _, err := stripBlock(b)
				return out, err
			}, k3sBase+"\n"); err != nil {
				return nil, err
			}
		}
	}
	for _, c := range d.ourDropIns {
		if err := p.removeOurs(c, "storepkg drop-in"); err != nil {
			return nil, err
		}
	}
	if cur, err := p.fs.readFile(o.NodeConfig); err == nil {
		if isOurs(cur) {
			if err := p.add(Change{Kind: Remove, Path: o.NodeConfig, Old: cur, Why: "storepkg node config"}); err != nil {
				return nil, err
			}
		} else {
			p.Notes = append(p.Notes, o.NodeConfig+" was not written by storepkg node install: kept")
		}
	}
	for _, name := range []string{ShimBinary, CLIBinary} {
		dst := filepath.Join(o.InstallDir, name)
		if p.fs.exists(dst) {
			if err := p.add(Change{Kind: Remove, Path: dst, Binary: true, Why: "installed by storepkg"}); err != nil {
				return nil, err
			}
		}
	}
	dirs := o.createdDirs()
	if cur, err := p.fs.readFile(o.stateFile()); err == nil && isOurs(cur) {
		if err := p.add(Change{Kind: Remove, Path: o.stateFile(), Old: cur, Why: "list of directories install created"}); err != nil {
			return nil, err
		}
	}
	for _, dir := range []string{o.InstallDir, filepath.Dir(o.InstallDir), filepath.Dir(o.NodeConfig)} {
		if strings.Contains(dir, "storepkg") && !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	// Deepest first.
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, dir := range dirs {
		if p.fs.exists(dir) {
			p.Changes = append(p.Changes, Change{Kind: RemoveDir, Path: dir, Why: "if empty"})
		}
	}
	return p, nil
}

// planRestore undoes our edits of a file we do not own. created is the
// content left when we had created the file ourselves ("" for none).
func (p *Plan) planRestore(path string, cur []byte, exists bool, strip func([]byte) ([]byte, error), created string) error {
	if !exists {
		return nil
	}
	stripped, err := strip(cur)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// Install backed up a link's target beside the target.
	real, _, err := p.fs.resolve(path)
	if err != nil {
		return err
	}
	backupPath := real + backupSuffix
	backup, berr := p.fs.readFile(backupPath)
	haveBackup := berr == nil
	switch {
	case haveBackup && (bytes.Equal(stripped, backup) || bytes.Equal(stripped, append(bytes.Clone(backup), '\n'))):
		if !bytes.Equal(cur, backup) {
			if err := p.add(Change{Kind: Update, Path: path, Data: backup, Old: cur, Config: true,
				Why: "restored byte for byte from " + backupPath}); err != nil {
				return err
			}
		}
		return p.add(Change{Kind: Remove, Path: backupPath, Why: "backup no longer needed"})
	case bytes.Equal(stripped, cur):
		if haveBackup {
			p.Notes = append(p.Notes, fmt.Sprintf("%s has no storepkg edits but differs from %s: kept both", path, backupPath))
		}
	case !haveBackup && (len(bytes.TrimSpace(stripped)) == 0 || string(stripped) == created):
		return p.add(Change{Kind: Remove, Path: path, Old: cur, Config: true, Why: "created by storepkg node install"})
	default:
		if haveBackup {
			p.Notes = append(p.Notes, fmt.Sprintf("%s changed since storepkg edited it: kept those changes, and the original in %s", path, backupPath))
		}
		return p.add(Change{Kind: Update, Path: path, Data: stripped, Old: cur, Config: true,
			Why: "storepkg's edits taken out"})
	}
	return nil
}
