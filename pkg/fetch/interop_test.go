package fetch_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestInteropWithNix: a closure Nix built and copied into a signed cache,
// in every compression Nix writes, fetched by storepkg, is a store real Nix
// verifies clean and whose closure is Nix's own.
func TestInteropWithNix(t *testing.T) {
	fx, key, caches := fixture(t)
	for _, c := range compressions {
		t.Run(c, func(t *testing.T) {
			root := t.TempDir()
			res, err := fetchInto(t, root, fetch.Options{
				Substituters: []string{"file://" + caches[c]},
				TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
			}, fx.Root)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Fetched) != len(fx.Closure) {
				t.Errorf("fetched %d paths, closure has %d", len(res.Fetched), len(fx.Closure))
			}
			nixtest.Verify(t, root)
			if got := nixtest.QueryClosure(t, root, fx.Root); !equalStrings(got, fx.Closure) {
				t.Errorf("nix-store -qR:\n%v\nwant (Nix's own):\n%v", got, fx.Closure)
			}
			// A second fetch finds everything valid and downloads nothing.
			res, err = fetchInto(t, root, fetch.Options{Substituters: []string{"file:///nonexistent"}}, fx.Root)
			if err != nil || len(res.Fetched) != 0 || len(res.Closure) != len(fx.Closure) {
				t.Errorf("refetch: %v, fetched %d, closure %d", err, len(res.Fetched), len(res.Closure))
			}
		})
	}
}

// TestCLIOverHTTP runs the storepkg binary against the cache served on
// 127.0.0.1, as an operator would.
func TestCLIOverHTTP(t *testing.T) {
	fx, key, caches := fixture(t)
	bin := buildCLI(t)
	url := nixtest.Serve(t, caches["zstd"], nil)
	root := t.TempDir()
	out, err := exec.Command(bin, "fetch", "--root", root, "--substituter", url, "--trusted-public-key", key.Public, fx.Root).CombinedOutput()
	if err != nil {
		t.Fatalf("storepkg fetch: %v\n%s", err, out)
	}
	if len(out) != 0 {
		t.Errorf("not a terminal, yet fetch printed: %s", out)
	}
	nixtest.Verify(t, root)
	if got := nixtest.QueryClosure(t, root, fx.Root); !equalStrings(got, fx.Closure) {
		t.Errorf("closure %v, want %v", got, fx.Closure)
	}
	out, err = exec.Command(bin, "path-info", "--root", root, "-r", fx.Root).CombinedOutput()
	if err != nil {
		t.Fatalf("storepkg path-info: %v\n%s", err, out)
	}
	for _, p := range fx.Closure {
		if !slices.Contains(strings.Split(string(out), "\n"), p) {
			t.Errorf("path-info -r lacks %s:\n%s", p, out)
		}
	}
}

var cliOnce struct {
	path string
	err  error
	out  []byte
}

// buildCLI builds cmd/storepkg once per test binary.
func buildCLI(t *testing.T) string {
	t.Helper()
	if cliOnce.path == "" && cliOnce.err == nil {
		dir, err := os.MkdirTemp("", "storepkg-cli-")
		if err != nil {
			t.Fatal(err)
		}
		cliOnce.path = filepath.Join(dir, "storepkg")
		cliOnce.out, cliOnce.err = exec.Command("go", "build", "-o", cliOnce.path, "github.com/storepkg/storepkg/cmd/storepkg").CombinedOutput()
	}
	if cliOnce.err != nil {
		t.Fatalf("go build: %v\n%s", cliOnce.err, cliOnce.out)
	}
	return cliOnce.path
}

// TestXZDecoders: the host's xz and the pure-Go fallback both fetch an xz
// cache, and both refuse a corrupt compressed file without leaving anything.
func TestXZDecoders(t *testing.T) {
	fx, key, caches := fixture(t)
	defer fetch.SetPureGoXZ(false)
	for _, pure := range []bool{false, true} {
		fetch.SetPureGoXZ(pure)
		name := map[bool]string{false: "xz-command", true: "pure-go"}[pure]
		t.Run(name, func(t *testing.T) {
			opts := fetch.Options{TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}}
			root := t.TempDir()
			opts.Substituters = []string{"file://" + caches["xz"]}
			res, err := fetchInto(t, root, opts, fx.Root)
			if err != nil {
				t.Fatal(err)
			}
			nixtest.Verify(t, root)
			// Every compressed byte is counted, also those xz read itself.
			var want int64
			for _, p := range res.Fetched {
				data, _ := os.ReadFile(filepath.Join(caches["xz"], p.HashPart()+".narinfo"))
				ni, _ := narinfo.ParseBytes(data)
				want += int64(ni.FileSize)
			}
			if res.Downloaded != want || want == 0 {
				t.Errorf("downloaded %d bytes, the fetched paths' FileSizes add up to %d", res.Downloaded, want)
			}

			// A compressed file longer than its FileSize (which is not
			// signed) is refused: the size bounds what is read.
			longer := copyCache(t, caches["xz"])
			data, _ := os.ReadFile(filepath.Join(longer, mustPath(t, fx.Root).HashPart()+".narinfo"))
			ni, _ := narinfo.ParseBytes(data)
			f, _ := os.OpenFile(filepath.Join(longer, ni.URL), os.O_WRONLY|os.O_APPEND, 0)
			f.Write(make([]byte, 4)) // stream padding: xz itself accepts it
			f.Close()
			opts.Substituters = []string{"file://" + longer}
			root = t.TempDir()
			if _, err := fetchInto(t, root, opts, fx.Root); !errors.Is(err, fetch.ErrHashMismatch) || !strings.Contains(err.Error(), "FileSize") {
				t.Fatalf("xz file longer than FileSize: %v", err)
			}
			assertUntouched(t, root, fx.Root)

			corrupt := copyCache(t, caches["xz"])
			data, _ = os.ReadFile(filepath.Join(corrupt, mustPath(t, fx.Root).HashPart()+".narinfo"))
			ni, _ = narinfo.ParseBytes(data)
			nar := filepath.Join(corrupt, ni.URL)
			b, _ := os.ReadFile(nar)
			b[len(b)/2] ^= 0xff
			os.WriteFile(nar, b, 0o644)
			opts.Substituters = []string{"file://" + corrupt}
			root = t.TempDir()
			_, err = fetchInto(t, root, opts, fx.Root)
			if err == nil || !strings.Contains(err.Error(), fx.Root) {
				t.Fatalf("corrupt xz: %v", err)
			}
			t.Logf("corrupt xz: %v", err)
			assertUntouched(t, root, fx.Root)
		})
	}
}
