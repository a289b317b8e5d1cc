// Package nixtest drives the real Nix (Debian's nix-bin) for tests: it
// builds closures offline into private chroot stores, writes signed binary
// caches with `nix copy`, and checks stores written by storepkg.
package nixtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/storepkg/storepkg/internal/testenv"
)

// Require makes the test unavailable (skipped, or failed in CI) unless
// each named program (nix, nix-store, gcc, ...) is installed.
func Require(t testing.TB, names ...string) {
	t.Helper()
	testenv.LookPath(t, names...)
}

// config is the Nix configuration of every test and script (hack/lib.sh
// points NIX_CONF_DIR at the same file).
//
//go:embed nixconf/nix.conf
var config []byte

// Env is the environment a Nix command of a test runs with: this
// process's, less every NIX_* variable (NIX_PATH, NIX_REMOTE, NIX_CONFIG,
// ...), with Nix's configuration directory set to one holding only the
// project's nix.conf, no user configuration files and a private cache
// directory. The host's Nix setup, present or absent, changes nothing.
func Env() []string {
	dir, err := nixHome()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_") && !strings.HasPrefix(kv, "XDG_CACHE_HOME=") {
			env = append(env, kv)
		}
	}
	if err != nil {
		// Nix then fails naming the missing directory: the test shows it.
		dir = filepath.Join(os.TempDir(), "storepkg-nix-unavailable")
	}
	return append(env,
		"NIX_CONF_DIR="+filepath.Join(dir, "conf"),
		"NIX_USER_CONF_FILES=",
		"XDG_CACHE_HOME="+filepath.Join(dir, "cache"))
}

var nixHome = sync.OnceValues(func() (string, error) {
	// One directory per configuration content, shared by the test
	// processes of a run and the next run: writing the same file again is
	// harmless, and a changed configuration gets a directory of its own.
	sum := sha256.Sum256(config)
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("storepkg-nix-%d-%x", os.Getuid(), sum[:6]))
	conf := filepath.Join(dir, "conf", "nix.conf")
	if b, err := os.ReadFile(conf); err == nil && bytes.Equal(b, config) {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(conf), ".nix.conf-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(config); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return dir, os.Rename(tmp.Name(), conf)
})

// Cmd returns a Nix command that runs with Env.
func Cmd(name string, args ...string) *exec.Cmd {
	return CommandContext(context.Background(), name, args...)
}

// CommandContext is Cmd with a context that kills the command.
func CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = Env()
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

// storeProblems are what `nix-store --verify --check-contents` prints
// about a store it finds wrong (Nix 2.8, LocalStore::verifyStore): a path
// whose contents changed, a valid path gone from disk (dropped from the
// database, or still referred to), and the errors behind a non-zero exit.
// Anything else it prints (progress, a warning about the host's setup)
// says nothing about the store.
var storeProblems = []string{"was modified!", "disappeared", "not all store errors were fixed", "error:"}

// Verify runs `nix-store --verify --check-contents` on the store under
// root and fails the test if Nix exits non-zero or reports a problem with
// the store.
func Verify(t testing.TB, root string) {
	t.Helper()
	out, err := Cmd("nix-store", "--store", StoreURI(root), "--verify", "--check-contents").CombinedOutput()
	if err != nil {
		t.Fatalf("nix-store --verify --check-contents %s: %v\n%s", root, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, p := range storeProblems {
			if strings.Contains(line, p) {
				t.Fatalf("nix-store --verify --check-contents %s: %s\n%s", root, line, out)
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
