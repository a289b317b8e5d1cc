package nodeinstall

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/storepkg/storepkg/pkg/shim"
)

const (
	testCache = "http://127.0.0.1:5000"
	testKey   = "test-cache-1:4gMWHBRVu0hS+a7eP02q8E6Z3FOuH7gzpQ/yiMqg1RQ="
)

// installCase is a node as a DaemonSet finds it.
type installCase struct {
	name       string
	files      map[string]string // host path -> content
	links      map[string]string // host path -> symbolic link target (made after files)
	containerd string            // the node's containerd (also checks the result)
	flavor     Flavor

	wantDropIn   string // the drop-in we write ("" for none)
	wantEdited   string // a file we edit in place (backed up), "" for none
	wantCreated  string // a containerd/k3s file we create, "" for none
	wantSystemd  bool   // SystemdCgroup copied from runc
	wantRestart  string // the restart command
	wantInRunc   bool   // the block names the default runtime explicitly (1.x)
	renderedPath string // k3s/rke2: the config.toml k3s renders
	k3sBase      string // k3s/rke2: what its built-in template renders (default: the rendered file)
}

func installCases() []installCase {
	const etc = "/etc/containerd/config.toml"
	const k3s = k3sDir + "/config.toml"
	k3sV3NoImports := strings.Replace(testdataString("k3s-v1.33-config.toml"),
		`imports = ["/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.d/*.toml"]`+"\n", "", 1)
	return []installCase{{
		name:       "containerd 2.3 default config (imports conf.d/*.toml)",
		files:      map[string]string{etc: testdataString("containerd-2.3.4-default.toml")},
		containerd: "2.3.4",
		wantDropIn: "/etc/containerd/conf.d/storepkg.toml",
		// containerd's default: cgroupfs.
		wantRestart: "systemctl restart containerd",
	}, {
		name:        "kind v0.31.0 node with containerd 2.3 (version 2, no imports)",
		files:       map[string]string{etc: testdataString("kind-v0.31.0.toml")},
		containerd:  "2.3.4",
		wantDropIn:  "/etc/containerd/conf.d/storepkg.toml",
		wantEdited:  etc,
		wantSystemd: true,
		wantRestart: "systemctl restart containerd",
	}, {
		name:        "no config file, containerd 2.3",
		containerd:  "2.3.4",
		wantCreated: etc,
		wantRestart: "systemctl restart containerd",
	}, {
		name: "containerd 1.7, root sets CRI options but no runtime",
		files: map[string]string{etc: "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n" +
			"  sandbox_image = \"registry.k8s.io/pause:3.9\"\n"},
		containerd:  "1.7.35",
		wantEdited:  etc,
		wantInRunc:  true,
		wantRestart: "systemctl restart containerd",
	}, {
		name:         "k3s with containerd 2 and config-v3.toml.d (drop-in)",
		files:        map[string]string{k3s: testdataString("k3s-v1.33-config.toml")},
		containerd:   "2.3.4",
		flavor:       FlavorK3s,
		wantDropIn:   k3sDir + "/config-v3.toml.d/storepkg.toml",
		wantSystemd:  true,
		wantRestart:  "systemctl restart k3s-agent",
		renderedPath: k3s,
	}, {
		name:         "k3s with containerd 2, no drop-in directory (config-v3.toml.tmpl)",
		files:        map[string]string{k3s: k3sV3NoImports},
		containerd:   "2.3.4",
		flavor:       FlavorK3s,
		wantCreated:  k3sDir + "/config-v3.toml.tmpl",
		wantSystemd:  true,
		wantRestart:  "systemctl restart k3s-agent",
		renderedPath: k3s,
	}, {
		name:         "k3s with containerd 1.7 (config.toml.tmpl)",
		files:        map[string]string{k3s: testdataString("k3s-v1.28-config.toml")},
		containerd:   "1.7.35",
		flavor:       FlavorK3s,
		wantCreated:  k3sDir + "/config.toml.tmpl",
		wantSystemd:  true,
		wantRestart:  "systemctl restart k3s-agent",
		renderedPath: k3s,
	}, {
		name: "k3s with the operator's own config.toml.tmpl",
		files: map[string]string{
			k3s:                          testdataString("k3s-v1.28-config.toml") + "\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gvisor]\n  runtime_type = \"io.containerd.runsc.v1\"\n",
			k3sDir + "/config.toml.tmpl": k3sBase + "\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gvisor]\n  runtime_type = \"io.containerd.runsc.v1\"\n",
		},
		k3sBase:      testdataString("k3s-v1.28-config.toml"),
		containerd:   "2.3.4",
		flavor:       FlavorK3s,
		wantEdited:   k3sDir + "/config.toml.tmpl",
		wantSystemd:  true,
		wantRestart:  "systemctl restart k3s-agent",
		renderedPath: k3s,
	}, {
		name:         "rke2 with containerd 2 and config-v3.toml.d",
		files:        map[string]string{rke2Dir + "/config.toml": strings.ReplaceAll(testdataString("k3s-v1.33-config.toml"), "/k3s/", "/rke2/")},
		containerd:   "2.3.4",
		flavor:       FlavorRKE2,
		wantDropIn:   rke2Dir + "/config-v3.toml.d/storepkg.toml",
		wantSystemd:  true,
		wantRestart:  "systemctl restart rke2-agent",
		renderedPath: rke2Dir + "/config.toml",
	}}
}

func testdataString(name string) string {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestInstallRealConfigs installs into host roots holding real node
// configurations (those of the containerd matrix's own versions are in
// TestInstallMatrix), checks what containerd itself makes of the result,
// installs again (nothing changes), uninstalls (the host root is as before,
// byte for byte).
func TestInstallRealConfigs(t *testing.T) {
	for _, c := range installCases() {
		t.Run(c.name, func(t *testing.T) {
			testInstall(t, c)
		})
	}
}

func testInstall(t *testing.T, c installCase) {
	ctx := context.Background()
	bin := containerdBin(t, c.containerd)
	root := newHost(t, c.files)
	for p, target := range c.links {
		link(t, root, p, target)
	}
	withContainerd(t, root, bin)
	host := &fakeHost{root: root}
	before := snapshot(t, root)

	config := "/etc/containerd/config.toml"
	if c.renderedPath != "" {
		config = c.renderedPath
	}
	var dumpBefore map[string]any
	if exists(t, root, config) {
		dumpBefore = configDump(t, root, config)
	} else {
		out, err := (HostRunner{Root: root}).Run(ctx, "containerd", "config", "default")
		if err != nil {
			t.Fatal(err)
		}
		if err := toml.Unmarshal(out, &dumpBefore); err != nil {
			t.Fatal(err)
		}
		delete(dumpBefore, "imports")
	}

	var labels []bool
	var log bytes.Buffer
	in := &Installer{
		Options: Options{
			HostRoot: root, Runner: host, SourceDir: binaries(t),
			Substituters: []string{testCache}, TrustedPublicKeys: []string{testKey}, StoreRoot: "/",
		},
		Out:   &log,
		Probe: func(context.Context) error { return nil },
		Label: func(_ context.Context, ready bool) error { labels = append(labels, ready); return nil },
	}
	if err := in.Install(ctx); err != nil {
		t.Fatalf("install: %v\n%s", err, log.String())
	}
	t.Logf("install:\n%s", log.String())
	if !slices.Contains(host.commands(), c.wantRestart) {
		t.Errorf("restart: ran %q, want %q", host.commands(), c.wantRestart)
	}
	// Every containerd, 1.7 included, gets the ready label: the shim
	// answers 1.7's start and serves its task API v2 (pkg/shim/task_v2.go).
	if !slices.Equal(labels, []bool{true}) {
		t.Errorf("labels %v, want [true]", labels)
	}

	// What we wrote.
	for _, p := range []string{c.wantDropIn, c.wantCreated} {
		if p != "" && !exists(t, root, p) {
			t.Errorf("%s not written", p)
		}
	}
	if c.wantEdited != "" {
		orig := c.files[c.wantEdited]
		if got := read(t, root, c.wantEdited+backupSuffix); got != orig {
			t.Errorf("backup of %s differs from the original", c.wantEdited)
		}
		// Our edits, taken out again, leave the original.
		got := read(t, root, c.wantEdited)
		var stripped []byte
		var err error
		if strings.HasSuffix(c.wantEdited, ".tmpl") {
			stripped, _, err = stripBlock([]byte(got))
		} else {
			stripped, err = stripRoot([]byte(got), []string{"/etc/containerd/conf.d/storepkg.toml"})
		}
		if err != nil || string(stripped) != orig {
			t.Errorf("%s: the edit is more than storepkg's lines (%v):\n%s", c.wantEdited, err, got)
		}
		block := ""
		if i := strings.Index(got, blockBegin); i >= 0 {
			block = got[i:]
		}
		if c.wantInRunc != strings.Contains(block, ".containerd.runtimes.runc]") {
			t.Errorf("%s: block names runc explicitly: %t, want %t", c.wantEdited, !c.wantInRunc, c.wantInRunc)
		}
	} else {
		for p := range c.files {
			if p != c.renderedPath && exists(t, root, p+backupSuffix) {
				t.Errorf("%s backed up but not meant to be edited", p)
			}
		}
	}
	for p, orig := range c.files {
		if p == c.wantEdited {
			continue
		}
		if got := read(t, root, p); got != orig {
			t.Errorf("%s changed, want it untouched:\n%s", p, got)
		}
	}
	for p, target := range c.links {
		if got, err := os.Readlink(filepath.Join(root, p)); err != nil || got != target {
			t.Errorf("link %s -> %s is now %q (%v)", p, target, got, err)
		}
	}
	for _, n := range []string{ShimBinary, CLIBinary} {
		fi, err := os.Stat(inRoot(t, root, filepath.Join(DefaultInstallDir, n)))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", n, fi, err)
		}
	}
	checkNodeConfig(t, root, c.wantSystemd)

	// k3s renders its config on restart: do what it does.
	if c.renderedPath != "" {
		base := c.k3sBase
		if base == "" {
			base = c.files[c.renderedPath]
		}
		rerenderK3s(t, root, c.renderedPath, base)
	}
	dumpAfter := configDump(t, root, config)
	checkDump(t, dumpBefore, dumpAfter)

	// Again: nothing to do, nothing restarted, the same bytes.
	afterInstall := snapshot(t, root)
	plan, err := PlanInstall(ctx, in.Options)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Changes) != 0 {
		var b bytes.Buffer
		plan.Describe(&b)
		t.Fatalf("second install would change:\n%s", b.String())
	}
	n := len(host.commands())
	log.Reset()
	if err := in.Install(ctx); err != nil {
		t.Fatalf("install again: %v\n%s", err, log.String())
	}
	for _, cmd := range host.commands()[n:] {
		if strings.Contains(cmd, "restart") {
			t.Errorf("second install restarted containerd: %s", cmd)
		}
	}
	if d := diffSnapshots(afterInstall, snapshot(t, root)); len(d) > 0 {
		t.Errorf("second install changed files: %v", d)
	}

	// Uninstall: the node as it was.
	log.Reset()
	labels = nil
	if err := in.Uninstall(ctx); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, log.String())
	}
	t.Logf("uninstall:\n%s", log.String())
	if !slices.Equal(labels, []bool{false}) {
		t.Errorf("uninstall labels %v, want [false]", labels)
	}
	if c.renderedPath != "" {
		base := c.k3sBase
		if base == "" {
			base = c.files[c.renderedPath]
		}
		rerenderK3s(t, root, c.renderedPath, base)
	}
	for p, orig := range c.files {
		if got := read(t, root, p); got != orig {
			t.Errorf("%s not restored byte for byte", p)
		}
	}
	if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
		t.Errorf("uninstall left the host root changed: %v", d)
	}
	// Uninstall again: nothing to do.
	plan, err = PlanUninstall(ctx, in.Options)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range plan.Changes {
		if ch.Kind != RemoveDir {
			t.Errorf("second uninstall would %s %s", ch.Kind, ch.Path)
		}
	}
}

// rerenderK3s writes config.toml as k3s would on start: from the first of
// its templates that exists, with its built-in one as "base" (here: the
// config.toml it rendered before we came, which is what base gives).
func rerenderK3s(t *testing.T, root, rendered, base string) {
	t.Helper()
	dir := filepath.Dir(rendered)
	out := base
	for _, name := range []string{"config-v3.toml.tmpl", "config.toml.tmpl"} {
		b, err := os.ReadFile(inRoot(t, root, filepath.Join(dir, name)))
		if err == nil {
			out = renderK3s(t, string(b), base)
			break
		}
	}
	put(t, root, rendered, out)
}

func checkNodeConfig(t *testing.T, root string, systemd bool) {
	t.Helper()
	data := read(t, root, DefaultNodeConfig)
	var cfg shim.Config
	dec := toml.NewDecoder(strings.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("the shim would refuse %s: %v\n%s", DefaultNodeConfig, err, data)
	}
	if !slices.Equal(cfg.Substituters, []string{testCache}) || !slices.Equal(cfg.TrustedPublicKeys, []string{testKey}) || cfg.StoreRoot != "/" {
		t.Errorf("node config %+v", cfg)
	}
	if cfg.SystemdCgroup != systemd {
		t.Errorf("node config SystemdCgroup = %t, want %t (from runc)", cfg.SystemdCgroup, systemd)
	}
}

// checkDump compares what containerd runs with before and after: our
// runtime with our keys, everything else the same.
func checkDump(t *testing.T, before, after map[string]any) {
	t.Helper()
	rtAfter := dumpRuntimes(t, after)
	sp, ok := rtAfter[RuntimeName].(map[string]any)
	if !ok {
		t.Fatalf("containerd does not see runtimes.%s; runtimes: %v", RuntimeName, keys(rtAfter))
	}
	want := map[string]any{
		"runtime_type":    RuntimeType,
		"runtime_path":    DefaultInstallDir + "/" + ShimBinary,
		"pod_annotations": []any{"storepkg.dev/*"},
	}
	for k, v := range want {
		if !reflect.DeepEqual(sp[k], v) {
			t.Errorf("runtimes.storepkg.%s = %#v, want %#v", k, sp[k], v)
		}
	}
	if opts, _ := sp["options"].(map[string]any); !reflect.DeepEqual(opts, map[string]any{"ConfigPath": DefaultNodeConfig}) {
		t.Errorf("runtimes.storepkg.options = %v", opts)
	}
	rtBefore := dumpRuntimes(t, before)
	if !reflect.DeepEqual(rtBefore["runc"], rtAfter["runc"]) {
		t.Errorf("runc changed:\nbefore %v\nafter  %v", rtBefore["runc"], rtAfter["runc"])
	}
	delete(rtAfter, RuntimeName)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("containerd's configuration changed beyond runtimes.%s", RuntimeName)
		diffMaps(t, "", before, after)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func diffMaps(t *testing.T, prefix string, a, b map[string]any) {
	t.Helper()
	for k, v := range a {
		w, ok := b[k]
		switch {
		case !ok:
			t.Logf("  %s%s: gone", prefix, k)
		case !reflect.DeepEqual(v, w):
			am, aok := v.(map[string]any)
			bm, bok := w.(map[string]any)
			if aok && bok {
				diffMaps(t, prefix+k+".", am, bm)
			} else {
				t.Logf("  %s%s: %v -> %v", prefix, k, v, w)
			}
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Logf("  %s%s: new", prefix, k)
		}
	}
}
