package toolcache

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestInStepWithInstallDeps: the matrix the tests run is the one
// hack/install-deps.sh builds, so a version added to one is never
// skipped, or built for nothing, by the other.
func TestInStepWithInstallDeps(t *testing.T) {
	script, err := os.ReadFile("../../hack/install-deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CONTAINERD_MATRIX=\(([^)]*)\)$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("hack/install-deps.sh has no CONTAINERD_MATRIX=(...) line")
	}
	if got := strings.Fields(string(m[1])); !slices.Equal(got, ContainerdMatrix) {
		t.Errorf("hack/install-deps.sh builds %v, ContainerdMatrix is %v", got, ContainerdMatrix)
	}
}

func TestMinor(t *testing.T) {
	for _, v := range ContainerdMatrix {
		if _, _, err := Minor(v); err != nil {
			t.Error(err)
		}
	}
	if major, minor, err := Minor("v2.10.1"); err != nil || major != 2 || minor != 10 {
		t.Errorf("Minor(v2.10.1) = %d, %d, %v", major, minor, err)
	}
	if _, _, err := Minor("latest"); err == nil {
		t.Error("Minor(latest): no error")
	}
}

func TestContainerd(t *testing.T) {
	t.Setenv("STOREPKG_TOOLS", "/cache")
	for _, v := range []string{"v2.1.9", "2.1.9"} {
		if got := Containerd(v); got != "/cache/containerd-v2.1.9/containerd" {
			t.Errorf("Containerd(%q) = %s", v, got)
		}
	}
}
