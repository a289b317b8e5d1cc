package nixtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The dynamic closure: a C program built by the host's gcc whose ELF
// interpreter and libc live in a glibc store path and whose own library
// lives in a third path, so it only runs when its whole closure is there.
// A busybox "tools" path gives exec something to run (sh, ls, cat, …).
const dynamicNix = `
{ glibcSrc, libgreetSrc, helloSrc }:
let
  busybox = builtins.path { path = ./bb; name = "busybox"; };
  mk = name: env: script: derivation ({
    inherit name; system = builtins.currentSystem;
    builder = "${busybox}/bin/sh"; args = [ "-c" script ]; PATH = "${busybox}/bin";
  } // env);
  glibc = builtins.path { path = glibcSrc; name = "glibc-host"; };
  libgreet = mk "libgreet-1.0" { inherit glibc; src = libgreetSrc; } ''mkdir -p $out/lib; cp $src/libgreet.so $out/lib/; chmod 555 $out/lib/libgreet.so'';
  hello = mk "hello-dyn-1.0" { inherit glibc libgreet; src = helloSrc; } ''mkdir -p $out/bin; cp $src/hello-dyn $out/bin/; chmod 555 $out/bin/hello-dyn'';
  tools = mk "tools" {} ''
    mkdir -p $out/bin
    for a in sh ls cat echo touch sleep wget nc id mount grep head wc; do ln -s ${busybox}/bin/busybox $out/bin/$a; done
  '';
in { inherit libgreet hello tools; }
`

const libgreetC = `#include <stdio.h>
void greet(const char *who) { printf("hello from %s, linked dynamically\n", who); fflush(stdout); }
`

const helloC = `#include <stdio.h>
#include <unistd.h>
#include <signal.h>
void greet(const char *who);
static void bye(int sig) { (void)sig; _exit(0); }
int main(int argc, char **argv) {
	signal(SIGTERM, bye);
	greet(argc > 1 ? argv[1] : "the nix store");
	for (;;) pause();
}
`

// DynamicFixture is the closure built by BuildDynamicClosure.
type DynamicFixture struct {
	Store string // chroot store root
	Hello string // store path with bin/hello-dyn
	Tools string // store path with busybox applets in bin/
	// Closure of Hello and Tools together, as Nix prints it.
	Closure []string
}

// BuildDynamicClosure compiles the program with gcc against store paths
// it first adds to a chroot store, then builds the closure with Nix. A
// random build ID in the sources makes its store paths new on each call.
func BuildDynamicClosure(t testing.TB, dir string) *DynamicFixture {
	t.Helper()
	Require(t, "nix-build", "nix-store", "gcc")
	src := filepath.Join(dir, "src")
	store := filepath.Join(dir, "store")
	for _, d := range []string{"bb/bin", "glibc/lib", "libgreet", "hello"} {
		must(t, os.MkdirAll(filepath.Join(src, d), 0o755))
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("static busybox (Debian busybox-static): %v", err)
	}
	must(t, os.WriteFile(filepath.Join(src, "bb/bin/busybox"), busybox, 0o755))
	must(t, os.Symlink("busybox", filepath.Join(src, "bb/bin/sh")))
	for _, lib := range []string{"libc.so.6", "ld-linux-x86-64.so.2"} {
		copyFile(t, hostLib(t, lib), filepath.Join(src, "glibc/lib", lib))
	}
	must(t, os.WriteFile(filepath.Join(src, "default.nix"), []byte(dynamicNix), 0o644))
	// Every build gets store paths of its own. A collector counts the
	// store paths that any process on the machine runs, maps or has in
	// its environment as roots (Nix's runtime roots, whatever the store's
	// root directory), so with the same paths the containers of another
	// test run on the machine would keep this run's closure alive.
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"bb", "glibc"} { // the sources of every other path
		must(t, os.WriteFile(filepath.Join(src, d, ".build-id"), []byte(hex.EncodeToString(nonce)+"\n"), 0o444))
	}

	// The glibc path's name is fixed by its contents: add it first to
	// learn where the program's interpreter and rpath must point.
	glibc := strings.Trim(strings.TrimSpace(Run(t, "nix-instantiate", "--store", StoreURI(store), "--eval", "--expr",
		`"${builtins.path { path = `+filepath.Join(src, "glibc")+`; name = "glibc-host"; }}"`)), `"`)
	build := func(attr string) string {
		args := fmt.Sprintf("{ glibcSrc = %s/glibc; libgreetSrc = %s/libgreet; helloSrc = %s/hello; }", src, src, src)
		expr := fmt.Sprintf("(import %s/default.nix %s).%s", src, args, attr)
		return strings.TrimSpace(Run(t, "nix-build", "--store", StoreURI(store), "--option", "sandbox", "true", "--no-out-link", "-E", expr))
	}
	// libgreet's path depends on its contents, so the program is linked
	// in a second round, against the library's store path.
	compile(t, filepath.Join(src, "libgreet"), "libgreet.so", libgreetC,
		"-shared", "-fPIC", "-Wl,-rpath,"+glibc+"/lib")
	libgreet := build("libgreet")
	compile(t, filepath.Join(src, "hello"), "hello-dyn", helloC,
		"-L"+filepath.Join(src, "libgreet"), "-lgreet",
		"-Wl,--dynamic-linker="+glibc+"/lib/ld-linux-x86-64.so.2",
		"-Wl,-rpath,"+libgreet+"/lib:"+glibc+"/lib")
	fx := &DynamicFixture{Store: store, Hello: build("hello"), Tools: build("tools")}
	fx.Closure = strings.Fields(Run(t, "nix-store", "--store", StoreURI(store), "-qR", fx.Hello, fx.Tools))
	return fx
}

func compile(t testing.TB, dir, out, source string, flags ...string) {
	t.Helper()
	c := filepath.Join(dir, strings.TrimSuffix(out, ".so")+".c")
	must(t, os.WriteFile(c, []byte(source), 0o644))
	args := append([]string{"-O2", "-o", filepath.Join(dir, out), c}, flags...)
	if o, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %v: %v\n%s", args, err, o)
	}
	os.Remove(c)
}

func hostLib(t testing.TB, name string) string {
	t.Helper()
	for _, d := range []string{"/lib/x86_64-linux-gnu", "/lib64", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("host library %s not found", name)
	return ""
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(dst, b, 0o755))
}
