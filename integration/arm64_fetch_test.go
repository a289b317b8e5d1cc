package integration

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/store"
)

// TestArm64Fetch: storepkg built for linux/arm64 and run under qemu's
// user-mode emulator fills an empty store from a binary cache that real
// Nix wrote and signed, and real (host) Nix then verifies every path's
// contents and sees the whole closure valid. The same code that an arm64
// node's shim runs as its fetch child, on this amd64 machine.
func TestArm64Fetch(t *testing.T) {
	qemu := testenv.LookPath(t, "qemu-aarch64-static")[0]
	nixtest.Require(t, "nix", "nix-build", "nix-store")
	dir := t.TempDir()
	t.Cleanup(func() { store.RemoveTree(dir) })

	bin := filepath.Join(dir, "arm64", "storepkg")
	buildFor(t, "arm64", bin, "./cmd/storepkg")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	machine := f.Machine
	f.Close()
	if machine != elf.EM_AARCH64 {
		t.Fatalf("%s is built for %v, want EM_AARCH64", bin, machine)
	}

	fx := nixtest.BuildClosure(t, filepath.Join(dir, "build"))
	key := nixtest.GenerateKey(t, dir, "arm64-test-1")
	cache := filepath.Join(dir, "cache")
	fx.WriteCache(t, cache, "xz", key)
	url := nixtest.Serve(t, cache, nil)

	root := filepath.Join(dir, "node")
	start := time.Now()
	cmd := exec.Command(qemu, bin, "fetch", "--root", root, "--substituter", url, "--trusted-public-key", key.Public, "--timeout", "5m", fx.Root)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-aarch64-static storepkg fetch: %v\n%s", err, out)
	}
	t.Logf("arm64 storepkg fetch of %d paths under qemu: %v", len(fx.Closure), time.Since(start).Round(time.Millisecond))

	nixtest.Verify(t, root)
	got := nixtest.QueryClosure(t, root, fx.Root)
	want := slices.Clone(fx.Closure)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Nix sees the closure %v in the fetched store, want %v", got, want)
	}
}

// buildFor builds the product module's packages for linux/goarch as
// `make release` does (static, stripped), at out (a directory if it ends
// in a slash).
func buildFor(t *testing.T, goarch, out string, pkgs ...string) {
	t.Helper()
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/storepkg/storepkg").Output()
	if err != nil {
		t.Fatalf("finding the storepkg module: %v", err)
	}
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-ldflags=-s", "-o", out}, pkgs...)...)
	cmd.Dir = strings.TrimSpace(string(root))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GOARCH=%s go build %s: %v\n%s", goarch, strings.Join(pkgs, " "), err, b)
	}
}
