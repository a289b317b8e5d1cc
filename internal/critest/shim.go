package critest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// ShimPackage is the import path of our shim.
const ShimPackage = "github.com/storepkg/storepkg/cmd/containerd-shim-storepkg-v1"

// BuildShim returns an absolute path of containerd-shim-storepkg-v1 for
// Options.ShimPath: $STOREPKG_SHIM when set (a prebuilt binary, e.g.
// bin/containerd-shim-storepkg-v1 after `make build`), else ShimPackage
// built with `go build` into a temporary directory of the test. It must
// run inside the module (as `go test` does).
func BuildShim(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("STOREPKG_SHIM"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil || !isExecutable(abs) {
			t.Fatalf("critest: STOREPKG_SHIM=%s is not an executable file", p)
		}
		return abs
	}
	out := filepath.Join(t.TempDir(), StorepkgShimBinary)
	started := time.Now()
	cmd := exec.Command("go", "build", "-o", out, ShimPackage)
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("critest: go build %s: %v\n%s", ShimPackage, err, output)
	}
	t.Logf("critest: built %s in %v", StorepkgShimBinary, time.Since(started).Round(time.Millisecond))
	return out
}
