package nodeinstall

import (
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func TestImportEditsRoundTrip(t *testing.T) {
	const p = "/etc/containerd/conf.d/storepkg.toml"
	for _, in := range []string{
		"version = 2\n\n[plugins]\n",
		"# comment\nversion = 3\nroot = '/x'\n",
		"imports = []\nversion = 2\n",
		"version = 2\nimports = [\"/a.toml\"]\n[grpc]\n  address = '/x'\n",
		"version = 2\nimports = [\n  \"/a.toml\", # the first\n  '/b/*.toml',\n]\n",
		"version = 2\nimports = [ # nothing yet\n]\n",
		"version = 2", // no newline at the end
		"[plugins.x]\n  a = 1\n",
		"",
	} {
		out, err := addImport([]byte(in), p)
		if err != nil {
			t.Errorf("addImport(%q): %v", in, err)
			continue
		}
		imps, err := importsOf(out)
		if err != nil || len(imps) == 0 || imps[len(imps)-1] != p {
			t.Errorf("addImport(%q) = %q: imports %q, %v", in, out, imps, err)
		}
		back, found, err := removeImport(out, p)
		if err != nil || !found {
			t.Errorf("removeImport(%q): found %t, %v", out, found, err)
			continue
		}
		if string(back) != in && !(in == "version = 2" && string(back) == "version = 2\n") {
			t.Errorf("round trip of %q gave %q (via %q)", in, back, out)
		}
	}
}

func TestRemoveImportLeavesOthers(t *testing.T) {
	in := "version = 2\nimports = [\"/etc/containerd/conf.d/storepkg.toml\", \"/a.toml\"]\n"
	out, found, err := removeImport([]byte(in), "/etc/containerd/conf.d/storepkg.toml")
	if err != nil || !found || string(out) != "version = 2\nimports = [\"/a.toml\"]\n" {
		t.Errorf("got %q %t %v", out, found, err)
	}
	out, found, err = removeImport([]byte(in), "/nosuch.toml")
	if err != nil || found || string(out) != in {
		t.Errorf("absent path: %q %t %v", out, found, err)
	}
}

func TestBlockRoundTrip(t *testing.T) {
	body := runtimeTable(3, "/opt/storepkg/bin/"+ShimBinary, DefaultNodeConfig)
	for _, in := range []string{"", "version = 3\n", "version = 3\n\n", "version = 3"} {
		out := appendBlock([]byte(in), body)
		var doc map[string]any
		if err := toml.Unmarshal(out, &doc); err != nil {
			t.Fatalf("appendBlock(%q) is not TOML: %v\n%s", in, err, out)
		}
		back, found, err := stripBlock(out)
		want := in
		if in == "version = 3" {
			want = in + "\n"
		}
		if err != nil || !found || string(back) != want {
			t.Errorf("strip(append(%q)) = %q, %t, %v", in, back, found, err)
		}
	}
	if _, _, err := stripBlock([]byte("a = 1\n" + blockBegin + "\nb = 2\n")); err == nil {
		t.Error("a block without its end marker was accepted")
	}
}

func TestRuntimeTableParses(t *testing.T) {
	for _, v := range []int{2, 3, 4} {
		var doc map[string]any
		if err := toml.Unmarshal([]byte(runtimeTable(v, "/opt/x", "/etc/y")), &doc); err != nil {
			t.Fatal(err)
		}
		cf := &configFile{Doc: doc, Version: v}
		rt := cf.runtime(RuntimeName)
		if rt["runtime_type"] != RuntimeType || rt["runtime_path"] != "/opt/x" {
			t.Errorf("version %d: %v", v, rt)
		}
	}
	table := renderTable(`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc`, map[string]any{
		"runtime_type": "io.containerd.runc.v2", "pod_annotations": []any{},
		"options": map[string]any{"SystemdCgroup": true, "BinaryName": "/usr/bin/runc"},
	})
	var doc map[string]any
	if err := toml.Unmarshal([]byte(table), &doc); err != nil {
		t.Fatalf("%v\n%s", err, table)
	}
	cf := &configFile{Doc: doc, Version: 2}
	if o := getTable(cf.runtime("runc"), "options"); o["SystemdCgroup"] != true || o["BinaryName"] != "/usr/bin/runc" {
		t.Errorf("rendered runc table: %v", cf.runtime("runc"))
	}
}

func TestDropInFor(t *testing.T) {
	for pattern, want := range map[string]string{
		"/etc/containerd/conf.d/*.toml":        "/etc/containerd/conf.d/storepkg.toml",
		"/etc/containerd/conf.d/*.conf":        "/etc/containerd/conf.d/storepkg.conf",
		"/etc/containerd/conf.d/*":             "/etc/containerd/conf.d/storepkg.toml",
		"/etc/containerd/conf.d/10-*.toml":     "",
		"/etc/containerd/*/x.toml":             "",
		"/etc/containerd/conf.d/a.toml":        "",
		"/etc/containerd/conf.d/storepkg.toml": "/etc/containerd/conf.d/storepkg.toml",
	} {
		if got := dropInFor(pattern); got != want {
			t.Errorf("dropInFor(%q) = %q, want %q", pattern, got, want)
		}
	}
}

func TestParseContainerdVersion(t *testing.T) {
	for out, want := range map[string]int{
		"containerd containerd.io 1.7.22 7f7fdf5fed64eb6a7caf99b3e12efcf9d60e311c\n":                       1,
		"containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376\n": 2,
		"containerd github.com/containerd/containerd 1.7.35+unknown \n":                                    1,
		"containerd github.com/k3s-io/containerd v2.0.5-k3s1 \n":                                           2,
	} {
		v, major, err := ParseContainerdVersion(out)
		if err != nil || major != want || !strings.Contains(out, v) {
			t.Errorf("ParseContainerdVersion(%q) = %q, %d, %v", out, v, major, err)
		}
	}
	if _, _, err := ParseContainerdVersion("no version here"); err == nil {
		t.Error("no error for output without a version")
	}
}

func TestDiffLines(t *testing.T) {
	got := diffLines([]string{"a", "b", "c"}, []string{"a", "x", "c", "d"})
	want := []string{"- b", "+ x", "+ d"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("diffLines = %q, want %q", got, want)
	}
}
