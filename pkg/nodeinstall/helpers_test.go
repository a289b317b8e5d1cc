package nodeinstall

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"

	"github.com/pelletier/go-toml/v2"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/internal/toolcache"
)

// containerdBin returns the containerd binary of the given version
// ("2.3.4", "v1.7.35"). Running it in a host root needs chroot, so root.
// Without them the test is unavailable (hack/install-deps.sh builds them).
func containerdBin(t *testing.T, version string) string {
	t.Helper()
	testenv.Root(t, "chroot into the test host root")
	p := toolcache.Containerd(version)
	if _, err := os.Stat(p); err != nil {
		testenv.Unavailable(t, "containerd %s not built at %s (hack/install-deps.sh builds it): %v", version, p, err)
	}
	return p
}

// newHost makes a temporary host root with files (host path -> content).
func newHost(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, data := range files {
		put(t, root, p, data)
	}
	return root
}

func put(t *testing.T, root, p, data string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(inRoot(t, root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// link makes the host path p a symbolic link to target.
func link(t *testing.T, root, p, target string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, full); err != nil {
		t.Fatal(err)
	}
}

// inRoot returns where the host path p is here, its links resolved the
// way the host resolves them (absolute ones from root, `..` stopping at
// root). It walks the path itself, not with the code under test.
func inRoot(t *testing.T, root, p string) string {
	t.Helper()
	resolved := "/"
	rest := strings.Split(p, "/")
	for links := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			resolved = next // not a link, or absent
			continue
		}
		if links++; links > 40 {
			t.Fatalf("%s: too many levels of symbolic links", p)
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, resolved)
}

// exists reports whether the host path p exists, links resolved in root.
func exists(t *testing.T, root, p string) bool {
	t.Helper()
	_, err := os.Stat(inRoot(t, root, p))
	return err == nil
}

func testdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// toolDir is where a test puts binaries inside a host root; snapshots
// leave it out.
const toolDir = "/usr/local/bin"

// withContainerd puts the containerd binary into the host root, as the
// host's /usr/local/bin/containerd, so `containerd --version` through a
// HostRunner and `config dump` run the real thing.
func withContainerd(t *testing.T, root, bin string) {
	t.Helper()
	dst := filepath.Join(root, toolDir, "containerd")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(bin, dst); err == nil {
		return
	}
	in, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// configDump runs the host root's containerd on a config file (a host
// path), chrooted, and returns the merged configuration it would run with.
func configDump(t *testing.T, root, config string) map[string]any {
	t.Helper()
	cmd := exec.Command(filepath.Join(toolDir, "containerd"), "--config", config, "config", "dump")
	cmd.SysProcAttr = chrootAttr(root)
	cmd.Dir = "/"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("containerd --config %s config dump: %v\n%s", config, err, stderr.String())
	}
	if s := stderr.String(); strings.Contains(s, "level=error") || strings.Contains(s, "level=fatal") {
		t.Fatalf("containerd config dump complained:\n%s", s)
	}
	var doc map[string]any
	if err := toml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("config dump output: %v\n%s", err, out)
	}
	// The list of files read differs by design (and 1.7 lists them in map order).
	delete(doc, "imports")
	return doc
}

// dumpRuntimes returns containerd.runtimes of the CRI plugin from a dump.
func dumpRuntimes(t *testing.T, dump map[string]any) map[string]any {
	t.Helper()
	for _, id := range []string{criPluginV3, criPluginV2} {
		if r := getTable(dump, "plugins", id, "containerd", "runtimes"); r != nil {
			return r
		}
	}
	t.Fatalf("no CRI runtimes in the dump")
	return nil
}

// snapshot hashes every file under root (but the test's tools) and
// records every symbolic link's target.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if rel == toolDir+"/containerd" {
			return nil
		}
		if e.IsDir() {
			out[rel+"/"] = "dir"
			return nil
		}
		if e.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			out[rel] = "link -> " + target
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, _ := e.Info()
		out[rel] = fmt.Sprintf("%x %v", sha256.Sum256(b), fi.Mode())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffSnapshots(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			out = append(out, "gone: "+k)
		} else if v != w {
			out = append(out, "changed: "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, "new: "+k)
		}
	}
	return out
}

// fakeHost records what the installer asks the host to do: restarts are
// recorded, not run; anything else runs chrooted into the host root (the
// real containerd's --version).
type fakeHost struct {
	root string
	mu   sync.Mutex
	ran  []string
}

func (f *fakeHost) Run(ctx context.Context, argv ...string) ([]byte, error) {
	f.mu.Lock()
	f.ran = append(f.ran, strings.Join(argv, " "))
	f.mu.Unlock()
	if argv[0] == "systemctl" || argv[0] == "sh" {
		if len(argv) > 1 && argv[1] == "is-active" {
			if argv[len(argv)-1] == "k3s" || argv[len(argv)-1] == "rke2-server" {
				return nil, fmt.Errorf("inactive")
			}
		}
		return nil, nil
	}
	return HostRunner{Root: f.root}.Run(ctx, argv...)
}

func (f *fakeHost) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ran...)
}

// renderK3s does what k3s does with a containerd template: parse it with
// k3s's built-in template available as "base", execute. Here "base" is the
// config.toml k3s rendered last (what its base template gives on this node).
func renderK3s(t *testing.T, tmpl, base string) string {
	t.Helper()
	tt, err := template.New("compiled_template").Parse(tmpl)
	if err != nil {
		t.Fatalf("k3s would refuse the template: %v", err)
	}
	if _, err := tt.New("base").Parse(base); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tt.Execute(&out, nil); err != nil {
		t.Fatalf("k3s would fail to render the template: %v", err)
	}
	return out.String()
}

// binaries makes an installer image directory with stand-in binaries.
func binaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{ShimBinary, CLIBinary} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\necho "+n+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func chrootAttr(root string) *syscall.SysProcAttr { return &syscall.SysProcAttr{Chroot: root} }
