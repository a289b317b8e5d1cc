package nodeinstall

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const etcConfig = "/etc/containerd/config.toml"

func planErr(t *testing.T, files map[string]string, version string) error {
	t.Helper()
	root := newHost(t, files)
	_, err := PlanInstall(context.Background(), Options{HostRoot: root, ContainerdVersion: version})
	return err
}

func TestRefusals(t *testing.T) {
	v2 := "version = 2\n"
	for _, c := range []struct {
		name    string
		files   map[string]string
		version string
		want    string
	}{{
		name:  "version 1 config",
		files: map[string]string{etcConfig: "[plugins.cri]\n  sandbox_image = \"x\"\n"},
		want:  "version 1 containerd config",
	}, {
		name:  "unknown future version",
		files: map[string]string{etcConfig: "version = 9\n"},
		want:  "config version 9",
	}, {
		name:  "CRI disabled (Docker's containerd.io)",
		files: map[string]string{etcConfig: v2 + "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"},
		want:  "disables containerd's CRI plugin",
	}, {
		name: "root already defines runtimes.storepkg",
		files: map[string]string{etcConfig: testdataString("containerd-2.3.4-default.toml") +
			"\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.storepkg]\n  runtime_type = 'io.containerd.storepkg.v1'\n"},
		version: "2.3.4",
		want:    etcConfig + " defines runtimes.storepkg",
	}, {
		name: "a later drop-in defines runtimes.storepkg (silently overrides ours)",
		files: map[string]string{
			etcConfig:                        testdataString("containerd-2.3.4-default.toml"),
			"/etc/containerd/conf.d/zz.toml": "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.storepkg]\n  runtime_type = 'x'\n",
		},
		version: "2.3.4",
		want:    "/etc/containerd/conf.d/zz.toml defines runtimes.storepkg",
	}, {
		name: "a version 2 drop-in defines it under the old plugin name",
		files: map[string]string{
			etcConfig:                        testdataString("containerd-2.3.4-default.toml"),
			"/etc/containerd/conf.d/aa.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.storepkg]\n  runtime_type = 'x'\n",
		},
		version: "2.3.4",
		want:    "aa.toml defines runtimes.storepkg",
	}, {
		name: "containerd 1.7: an import replaces the CRI table",
		files: map[string]string{
			etcConfig:                  "version = 2\nimports = [\"/etc/containerd/cri.toml\"]\n",
			"/etc/containerd/cri.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"x\"\n",
		},
		version: "1.7.22",
		want:    "puts in place of the root file's whole table",
	}, {
		name: "someone else's file where our drop-in goes",
		files: map[string]string{
			etcConfig:                              testdataString("containerd-2.3.4-default.toml"),
			"/etc/containerd/conf.d/storepkg.toml": "version = 3\n",
		},
		version: "2.3.4",
		want:    "not written by storepkg",
	}, {
		name:    "containerd 1.6",
		files:   map[string]string{etcConfig: v2},
		version: "1.6.33",
		want:    "needs containerd 1.7 or 2.x",
	}} {
		t.Run(c.name, func(t *testing.T) {
			err := planErr(t, c.files, c.version)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error about %q", err, c.want)
			}
		})
	}
}

func TestK3sNotRendered(t *testing.T) {
	root := newHost(t, nil)
	_, err := PlanInstall(context.Background(), Options{HostRoot: root, Flavor: FlavorK3s})
	if err == nil || !strings.Contains(err.Error(), "has not rendered") {
		t.Errorf("got %v", err)
	}
}

// With a version 2 root and no way to tell containerd's version, install
// edits the root in place: safe on 1.7 and 2.x alike.
func TestUnknownVersionIsEditedInPlace(t *testing.T) {
	root := newHost(t, map[string]string{etcConfig: testdataString("kind-v0.31.0.toml")})
	p, err := PlanInstall(context.Background(), Options{HostRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	if p.Detection.VersionError == nil || !slices.Contains(p.Notes, "runtime entry: "+stratInPlace.String()) {
		t.Errorf("notes %q, version error %v", p.Notes, p.Detection.VersionError)
	}
}

// An operator edits the root config after install: uninstall keeps their
// edit, takes ours out, and keeps the backup.
func TestUninstallKeepsLaterEdits(t *testing.T) {
	ctx := context.Background()
	orig := testdataString("containerd-1.7.35-default.toml")
	root := newHost(t, map[string]string{etcConfig: orig})
	o := Options{HostRoot: root, ContainerdVersion: "1.7.35"}
	p, err := PlanInstall(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(read(t, root, etcConfig), `oom_score = 0`, `oom_score = -999`, 1)
	put(t, root, etcConfig, edited)
	p, err = PlanUninstall(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(orig, `oom_score = 0`, `oom_score = -999`, 1)
	if got := read(t, root, etcConfig); got != want {
		t.Errorf("after uninstall:\n%s", got)
	}
	if got := read(t, root, etcConfig+backupSuffix); got != orig {
		t.Error("backup not kept")
	}
	var b bytes.Buffer
	p.Describe(&b)
	if !strings.Contains(b.String(), "changed since storepkg edited it") {
		t.Errorf("no note about the kept backup:\n%s", b.String())
	}
}

// The binaries must both be in the installer image.
func TestMissingShim(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, CLIBinary), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := newHost(t, map[string]string{etcConfig: testdataString("containerd-2.3.4-default.toml")})
	_, err := PlanInstall(context.Background(), Options{HostRoot: root, ContainerdVersion: "2.3.4", SourceDir: src})
	if err == nil || !strings.Contains(err.Error(), ShimBinary) {
		t.Errorf("got %v", err)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	root := newHost(t, map[string]string{etcConfig: testdataString("kind-v0.31.0.toml")})
	before := snapshot(t, root)
	host := &fakeHost{root: root}
	var out bytes.Buffer
	in := &Installer{
		Options: Options{HostRoot: root, ContainerdVersion: "2.1.0", Runner: host, SourceDir: binaries(t)},
		DryRun:  true, Out: &out,
		Probe: func(context.Context) error { t.Error("dry run probed"); return nil },
	}
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
		t.Errorf("dry run changed %v", d)
	}
	if !strings.Contains(out.String(), "would restart containerd: systemctl restart containerd") ||
		!strings.Contains(out.String(), `+ imports = ["/etc/containerd/conf.d/storepkg.toml"]`) {
		t.Errorf("dry run output:\n%s", out.String())
	}
	if len(host.commands()) != 0 {
		t.Errorf("dry run ran %q", host.commands())
	}
}

func TestRestartModes(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		mode   string
		flavor Flavor
		want   string
	}{
		{"", FlavorContainerd, "systemctl restart containerd"},
		{RestartAuto, FlavorK3s, "systemctl restart k3s-agent"},
		{RestartAuto, FlavorRKE2, "systemctl restart rke2-agent"},
		{RestartSystemd, FlavorK3s, "systemctl restart containerd"},
		{"command:service containerd restart", FlavorContainerd, "sh -c service containerd restart"},
		{RestartNone, FlavorContainerd, ""},
	} {
		argv, err := restartArgv(ctx, c.mode, c.flavor, &fakeHost{})
		if err != nil || strings.Join(argv, " ") != c.want {
			t.Errorf("%q/%s: %q %v, want %q", c.mode, c.flavor, argv, err, c.want)
		}
	}
	for _, bad := range []string{"docker", "command:", "command:  "} {
		if err := ValidRestart(bad); err == nil {
			t.Errorf("restart mode %q accepted", bad)
		}
	}
}

// With --restart=none the installer neither waits nor labels after a
// config change; the operator restarts.
func TestRestartNoneDoesNotLabel(t *testing.T) {
	root := newHost(t, map[string]string{etcConfig: testdataString("containerd-2.3.4-default.toml")})
	var out bytes.Buffer
	in := &Installer{
		Options: Options{HostRoot: root, ContainerdVersion: "2.3.4"},
		Restart: RestartNone, Out: &out,
		Probe: func(context.Context) error { t.Error("probed"); return nil },
		Label: func(context.Context, bool) error { t.Error("labelled"); return nil },
	}
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "restart containerd to load it") {
		t.Errorf("output:\n%s", out.String())
	}
}

// A runtime that never answers: install fails and does not label.
func TestNotReadyIsAnError(t *testing.T) {
	root := newHost(t, map[string]string{etcConfig: testdataString("containerd-2.3.4-default.toml")})
	in := &Installer{
		Options:     Options{HostRoot: root, ContainerdVersion: "2.3.4", Runner: &fakeHost{root: root}},
		WaitTimeout: 50 * 1e6,
		Probe:       func(context.Context) error { return errors.New("no answer") },
		Label:       func(context.Context, bool) error { t.Error("labelled"); return nil },
	}
	err := in.Install(context.Background())
	if !errors.Is(err, errNotReady) || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("got %v", err)
	}
}
