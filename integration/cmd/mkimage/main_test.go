package main

import (
	"os"
	"path/filepath"
	"testing"
)

// A Debian-like root: /lib -> usr/lib (relative), and an absolute symlink
// that must resolve inside the root, never on the host.
func TestRootfsResolve(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("usr/lib/x86_64-linux-gnu")
	mk("usr/lib64")
	mk("etc")
	if err := os.WriteFile(filepath.Join(root, "usr/lib/x86_64-linux-gnu/ld.so"), []byte("loader"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"lib":                  "usr/lib",
		"lib64":                "usr/lib64",
		"usr/lib64/ld.so":      "/lib/x86_64-linux-gnu/ld.so",
		"etc/passwd-of-host":   "/etc/passwd",
		"usr/lib/loop":         "loop",
		"usr/lib/escape-tries": "../../../../usr/lib/x86_64-linux-gnu/ld.so",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	r := newRootfs(root)

	res, err := r.resolve("/lib64/ld.so")
	if err != nil {
		t.Fatal(err)
	}
	if res.real != "/usr/lib/x86_64-linux-gnu/ld.so" {
		t.Errorf("real = %s", res.real)
	}
	var links []string
	for _, l := range res.links {
		links = append(links, l.Path+" -> "+l.Link)
	}
	want := []string{"/lib64 -> usr/lib64", "/usr/lib64/ld.so -> /lib/x86_64-linux-gnu/ld.so", "/lib -> usr/lib"}
	if len(links) != len(want) {
		t.Fatalf("links = %q, want %q", links, want)
	}
	for i := range want {
		if links[i] != want[i] {
			t.Errorf("links[%d] = %q, want %q", i, links[i], want[i])
		}
	}

	// ".." never climbs above the root.
	if res, err := r.resolve("/usr/lib/escape-tries"); err != nil || res.real != "/usr/lib/x86_64-linux-gnu/ld.so" {
		t.Errorf("resolve(escape-tries) = %v, %v", res.real, err)
	}
	// The host's /etc/passwd is not the root's.
	if _, err := r.resolve("/etc/passwd-of-host"); err == nil {
		t.Error("resolve followed an absolute symlink out of the root")
	}
	if _, err := r.resolve("/usr/lib/loop"); err == nil {
		t.Error("resolve did not stop at a symlink loop")
	}

	if err := r.add("/lib64/ld.so"); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range r.list() {
		files[f.Path] = f.Link + string(f.Data)
	}
	wantFiles := map[string]string{
		"/lib":                            "usr/lib",
		"/lib64":                          "usr/lib64",
		"/usr/lib64/ld.so":                "/lib/x86_64-linux-gnu/ld.so",
		"/usr/lib/x86_64-linux-gnu/ld.so": "loader",
	}
	if len(files) != len(wantFiles) {
		t.Errorf("files = %v, want %v", files, wantFiles)
	}
	for p, w := range wantFiles {
		if files[p] != w {
			t.Errorf("%s: %q, want %q", p, files[p], w)
		}
	}
}
