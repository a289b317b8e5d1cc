package nodeinstall

import (
	"os/exec"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/storepkg/storepkg/internal/toolcache"
)

// defaultLayouts is the layout of the config each containerd of the
// matrix writes as `config default`: what a node that kept it has. A
// version new to toolcache.ContainerdMatrix needs its line here (and in
// docs/compatibility.md).
var defaultLayouts = map[string]struct {
	configVersion int
	importsConfD  bool // imports = ['/etc/containerd/conf.d/*.toml']
}{
	"v1.7.35": {2, false},
	"v2.0.14": {3, false},
	"v2.1.9":  {3, false},
	"v2.2.10": {3, true},
	"v2.3.7":  {4, true},
	"v2.4.2":  {4, true},
}

// TestInstallMatrix installs on every containerd of the matrix, in each
// layout a node may have: the version's own default config, no config
// file, a version 2 root that imports conf.d/*.toml (drop-ins), a version
// 3 one that does (2.x), and kind's node config (version 2, no imports,
// systemd cgroups). As TestInstallRealConfigs, each is checked by that
// containerd's `config dump` of the result, installed again and
// uninstalled to the byte.
func TestInstallMatrix(t *testing.T) {
	for _, v := range toolcache.ContainerdMatrix {
		t.Run(v, func(t *testing.T) {
			bin := containerdBin(t, v)
			for _, c := range matrixCases(t, v, bin) {
				t.Run(c.name, func(t *testing.T) { testInstall(t, c) })
			}
		})
	}
}

func matrixCases(t *testing.T, version, bin string) []installCase {
	t.Helper()
	const etc = "/etc/containerd/config.toml"
	const dropIn = "/etc/containerd/conf.d/storepkg.toml"
	major, _, err := toolcache.Minor(version)
	if err != nil {
		t.Fatal(err)
	}
	layout, ok := defaultLayouts[version]
	if !ok {
		t.Fatalf("containerd %s: no line in defaultLayouts", version)
	}
	out, err := exec.Command(bin, "config", "default").Output()
	if err != nil {
		t.Fatalf("%s config default: %v", bin, err)
	}
	var def struct {
		Version int      `toml:"version"`
		Imports []string `toml:"imports"`
	}
	if err := toml.Unmarshal(out, &def); err != nil {
		t.Fatalf("%s config default: %v", bin, err)
	}
	if imports := len(def.Imports) == 1 && def.Imports[0] == "/etc/containerd/conf.d/*.toml"; def.Version != layout.configVersion || imports != layout.importsConfD || len(def.Imports) > 1 {
		t.Fatalf("containerd %s's default config has version %d and imports %q: not the layout defaultLayouts says", version, def.Version, def.Imports)
	}

	legacy := major < 2 // containerd 1.x: no deep merge of imports, so we edit the root
	c := func(name string, files map[string]string) installCase {
		ic := installCase{
			name:        name,
			files:       files,
			containerd:  version,
			wantRestart: "systemctl restart containerd",
		}
		if len(files) == 0 {
			ic.wantCreated = etc
			ic.wantInRunc = legacy
		}
		return ic
	}
	defaultCase := c("its config default", map[string]string{etc: string(out)})
	switch {
	case legacy:
		defaultCase.wantEdited = etc
	case layout.importsConfD:
		defaultCase.wantDropIn = dropIn
	default:
		defaultCase.wantDropIn, defaultCase.wantEdited = dropIn, etc // and the import
	}
	v2Imports := c("version 2 importing conf.d/*.toml, no runtime", map[string]string{etc: "version = 2\n" +
		"imports = [\"/etc/containerd/conf.d/*.toml\"]\n\n" +
		"[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.10\"\n"})
	if legacy {
		v2Imports.wantEdited, v2Imports.wantInRunc = etc, true
	} else {
		v2Imports.wantDropIn = dropIn
	}
	kind := c("kind v0.31.0 node config", map[string]string{etc: testdataString("kind-v0.31.0.toml")})
	kind.wantSystemd, kind.wantEdited = true, etc
	if !legacy {
		kind.wantDropIn = dropIn
	}
	cases := []installCase{defaultCase, c("no config file", nil), v2Imports, kind}
	if !legacy {
		v3 := c("version 3 importing conf.d/*.toml", map[string]string{etc: "version = 3\n" +
			"imports = ['/etc/containerd/conf.d/*.toml']\n\n" +
			"[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n"})
		v3.wantDropIn = dropIn
		cases = append(cases, v3)
	}
	return cases
}
