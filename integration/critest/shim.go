package critest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ShimPackage is the import path of our shim, CLIPackage of the storepkg
// CLI, which the shim runs beside it to substitute closures.
const (
	ShimPackage = "github.com/storepkg/storepkg/cmd/containerd-shim-storepkg-v1"
	CLIPackage  = "github.com/storepkg/storepkg/cmd/storepkg"
)

// BuildShim returns an absolute path of containerd-shim-storepkg-v1 for
// Options.ShimPath, with the storepkg CLI beside it: $STOREPKG_SHIM when
// set (a prebuilt binary, e.g. bin/containerd-shim-storepkg-v1 after
// `make build`), else ShimPackage and CLIPackage built with `go build`
// into a temporary directory of the test. It must run inside the module
// (as `go test` does).
func BuildShim(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("STOREPKG_SHIM"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil || !isExecutable(abs) {
			t.Fatalf("critest: STOREPKG_SHIM=%s is not an executable file", p)
		}
		if cli := filepath.Join(filepath.Dir(abs), "storepkg"); !isExecutable(cli) {
			t.Fatalf("critest: STOREPKG_SHIM=%s has no storepkg CLI beside it (%s), which it runs to fetch", p, cli)
		}
		return abs
	}
	dir := t.TempDir()
	out := filepath.Join(dir, StorepkgShimBinary)
	started := time.Now()
	BuildProduct(t, dir, ShimPackage, CLIPackage)
	t.Logf("critest: built %s in %v", StorepkgShimBinary, time.Since(started).Round(time.Millisecond))
	return out
}

// BuildProduct builds storepkg's packages (main packages of the product
// module, github.com/storepkg/storepkg) into dir. It builds in the product
// module, so the binaries under test have exactly the dependency versions
// of the product's go.mod, not those this module's graph selects.
func BuildProduct(t testing.TB, dir string, pkgs ...string) {
	t.Helper()
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/storepkg/storepkg").Output()
	if err != nil {
		t.Fatalf("critest: finding the storepkg module: %v", err)
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("critest: go build %s (in %s): %v\n%s", strings.Join(pkgs, " "), cmd.Dir, err, out)
	}
}
