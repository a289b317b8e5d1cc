package critest

import (
	"slices"
	"testing"
)

// TestGenerations: what an Env makes of each containerd it may run.
func TestGenerations(t *testing.T) {
	if !slices.Contains(ContainerdMatrix, Containerd17Version) {
		t.Errorf("Containerd17Version %s is not in ContainerdMatrix %v", Containerd17Version, ContainerdMatrix)
	}
	want := map[string]generation{
		"":         {version: ContainerdVersion, configVersion: 3, bootstrap: true, cniBinDirs: true},
		"v1.7.35":  {configVersion: 2},
		"v2.0.14":  {configVersion: 3},
		"v2.1.9":   {configVersion: 3, cniBinDirs: true},
		"v2.2.10":  {configVersion: 3, cniBinDirs: true},
		"v2.3.7":   {configVersion: 3, bootstrap: true, cniBinDirs: true},
		"v2.4.2":   {configVersion: 3, bootstrap: true, cniBinDirs: true},
		"v2.99.0":  {},
		"v1.6.0":   {},
		"v2.3.7-x": {},
	}
	for _, v := range ContainerdMatrix {
		if _, ok := want[v]; !ok {
			t.Errorf("%s: add it to this test (and to docs/compatibility.md)", v)
		}
	}
	for v, w := range want {
		g, err := generationOf(v)
		known := v == "" || slices.Contains(ContainerdMatrix, v)
		if !known {
			if err == nil {
				t.Errorf("generationOf(%q): no error for a containerd hack/install-deps.sh does not build", v)
			}
			continue
		}
		if err != nil {
			t.Errorf("generationOf(%q): %v", v, err)
			continue
		}
		if v != "" && (g.version != v || g.bin == "") {
			t.Errorf("generationOf(%q): version %q, bin %q", v, g.version, g.bin)
		}
		g.version, g.bin = w.version, ""
		if g != w {
			t.Errorf("generationOf(%q) = %+v, want %+v", v, g, w)
		}
	}
}
