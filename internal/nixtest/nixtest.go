// Package nixtest drives the real Nix (Debian's nix-bin) for tests: it
// builds closures offline into private chroot stores, writes signed binary
// caches with `nix copy`, and checks stores written by storepkg.
package nixtest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Require returns the path of each named program, skipping the test when
// one is missing, except in CI (CI set), where a missing component fails.
func Require(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI (hack/install-deps.sh installs it): %v", name, err)
			}
			t.Skipf("%s not installed (run hack/install-deps.sh)", name)
		}
	}
}

// Config is the Nix configuration every command runs with: no network
// substituters, no build users, the new CLI enabled.
const Config = "experimental-features = nix-command\nsubstituters =\nbuild-users-group =\nsandbox = false\nfsync-metadata = false\n"

// Cmd returns a Nix command with Config in its environment.
func Cmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+Config)
	return cmd
}

// Run runs a Nix command and returns its stdout, failing the test with its
// stderr on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := Cmd(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// StoreURI is Nix's name for the store under root.
func StoreURI(root string) string { return "local?root=" + root }

// Fixture is a closure built by Nix.
type Fixture struct {
	Store   string   // root of the chroot store Nix built into
	Root    string   // the top store path
	Closure []string // `nix-store -qR Root`, as Nix prints it
}

// closureNix builds, from a static busybox only: a directory path with
// executables and symlinks, a single-file store path, a path that refers
// to itself, a larger data path, and a top path tying them together.
const closureNix = `
let
  busybox = builtins.path { path = ./bb; name = "busybox"; };
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem;
    builder = "${busybox}/bin/sh"; args = [ "-c" script ]; PATH = "${busybox}/bin";
  };
  hello = mk "hello.sh" ''printf '#!${busybox}/bin/sh\necho hello from a single-file path\n' > $out; chmod +x $out'';
  lib = mk "lib-1.0" ''
    mkdir -p $out/bin $out/share/doc $out/lib
    echo library > $out/lib/libx.so.1; ln -s libx.so.1 $out/lib/libx.so
    ln -s ${hello} $out/bin/hello
    printf '#!${busybox}/bin/sh\necho tool\n' > $out/bin/tool; chmod +x $out/bin/tool
    touch $out/share/doc/empty
  '';
  selfref = mk "selfref" ''mkdir -p $out; echo $out > $out/me; echo ${lib} > $out/lib'';
  data = mk "data" ''mkdir -p $out; seq 1 400000 > $out/numbers; head -c 3000000 /dev/zero | tr '\0' x > $out/xs'';
in mk "app" ''
  mkdir -p $out/bin
  ln -s ${lib}/bin/tool $out/bin/tool
  printf '#!${busybox}/bin/sh\n${hello}\n' > $out/bin/app; chmod +x $out/bin/app
  echo ${selfref} ${data} > $out/refs
''
`

// BuildClosure builds the fixture closure into dir/store with nix-build,
// offline, in a sandbox so the chroot store appears at /nix/store.
func BuildClosure(t testing.TB, dir string) *Fixture {
	t.Helper()
	Require(t, "nix-build", "nix-store")
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "bb", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("static busybox (Debian busybox-static): %v", err)
	}
	must(t, os.WriteFile(filepath.Join(src, "bb", "bin", "busybox"), busybox, 0o755))
	must(t, os.Symlink("busybox", filepath.Join(src, "bb", "bin", "sh")))
	must(t, os.WriteFile(filepath.Join(src, "default.nix"), []byte(closureNix), 0o644))
	store := filepath.Join(dir, "store")
	out := Run(t, "nix-build", "--store", StoreURI(store), "--option", "sandbox", "true", "--no-out-link", filepath.Join(src, "default.nix"))
	fx := &Fixture{Store: store, Root: strings.TrimSpace(out)}
	fx.Closure = strings.Fields(Run(t, "nix-store", "--store", StoreURI(store), "-qR", fx.Root))
	return fx
}

// Key is a signing key pair made by `nix key generate-secret`.
type Key struct {
	SecretFile string
	Public     string // NAME:BASE64
}

// GenerateKey makes a key named name, its secret in dir.
func GenerateKey(t testing.TB, dir, name string) Key {
	t.Helper()
	secret := Run(t, "nix", "key", "generate-secret", "--key-name", name)
	file := filepath.Join(dir, name+".secret")
	must(t, os.WriteFile(file, []byte(secret), 0o600))
	cmd := Cmd("nix", "key", "convert-secret-to-public")
	cmd.Stdin = strings.NewReader(secret)
	pub, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix key convert-secret-to-public: %v", err)
	}
	return Key{SecretFile: file, Public: strings.TrimSpace(string(pub))}
}

// WriteCache copies the fixture's closure into a file:// binary cache at
// dir with the given compression, signed by key.
func (fx *Fixture) WriteCache(t testing.TB, dir, compression string, key Key) {
	t.Helper()
	to := fmt.Sprintf("file://%s?compression=%s&secret-key=%s", dir, compression, key.SecretFile)
	Run(t, "nix", "copy", "--store", StoreURI(fx.Store), "--to", to, fx.Root)
}

// Verify runs `nix-store --verify --check-contents` on the store under
// root and fails the test unless Nix finds it clean.
func Verify(t testing.TB, root string) {
	t.Helper()
	cmd := Cmd("nix-store", "--store", StoreURI(root), "--verify", "--check-contents")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nix-store --verify --check-contents: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch line {
		case "", "reading the Nix store...", "checking path existence...", "checking link hashes...", "checking store hashes...":
		default:
			if !strings.HasPrefix(line, "checking contents of") {
				t.Fatalf("nix-store --verify: %s\n%s", line, out)
			}
		}
	}
}

// QueryClosure returns `nix-store -qR path` for the store under root.
func QueryClosure(t testing.TB, root, path string) []string {
	t.Helper()
	return strings.Fields(Run(t, "nix-store", "--store", StoreURI(root), "-qR", path))
}

// StoreEntries lists root/nix/store, so tests can see nothing but valid
// paths (and no temporary or half-written entries) is left.
func StoreEntries(t testing.TB, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "nix", "store"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// Serve serves dir over HTTP on 127.0.0.1, wrapped by wrap if not nil.
func Serve(t testing.TB, dir string, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = http.FileServer(http.Dir(dir))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
