// Package toolcache says where hack/install-deps.sh keeps the programs it
// builds from the Go module proxy, and which containerd versions the tests
// run: one list for pkg/nodeinstall's tests and integration/critest.
package toolcache

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ContainerdMatrix is the newest patch release of every containerd minor
// from 1.7 on that the module proxy serves, oldest first: the CRI matrix
// test runs a pod on each, and pkg/nodeinstall checks its config edits
// with each one's `config dump`. Keep it in step with CONTAINERD_MATRIX in
// hack/install-deps.sh (TestInStepWithInstallDeps checks).
var ContainerdMatrix = []string{"v1.7.35", "v2.0.14", "v2.1.9", "v2.2.10", "v2.3.7", "v2.4.2"}

// Dir is where hack/install-deps.sh caches the tools: $STOREPKG_TOOLS, else
// /var/cache/storepkg/tools.
func Dir() string {
	if d := os.Getenv("STOREPKG_TOOLS"); d != "" {
		return d
	}
	return "/var/cache/storepkg/tools"
}

// Containerd is where hack/install-deps.sh puts the containerd daemon of
// version ("v2.1.9"; the "v" may be left out): the cache is keyed by
// version, <Dir>/containerd-<version>/containerd.
func Containerd(version string) string {
	return filepath.Join(Dir(), "containerd-v"+strings.TrimPrefix(version, "v"), "containerd")
}

// Minor returns the major and minor numbers of a version such as "v2.1.9".
func Minor(version string) (major, minor int, err error) {
	if _, err := fmt.Sscanf(strings.TrimPrefix(version, "v"), "%d.%d", &major, &minor); err != nil {
		return 0, 0, fmt.Errorf("containerd version %q: %w", version, err)
	}
	return major, minor, nil
}
