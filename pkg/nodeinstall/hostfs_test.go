package nodeinstall

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// hostFS never replaces or removes a link itself, and globs inside the
// root.
func TestHostFS(t *testing.T) {
	root := newHost(t, map[string]string{"/srv/a.toml": "a", "/srv/b.toml": "b", "/srv/c.txt": "c"})
	link(t, root, "/etc/conf.d", "/srv")
	link(t, root, "/etc/l.toml", "/srv/a.toml")
	h := newHostFS(root)
	got, err := h.glob("/etc/conf.d/*.toml")
	if err != nil || strings.Join(got, " ") != "/etc/conf.d/a.toml /etc/conf.d/b.toml" {
		t.Errorf("glob: %q %v", got, err)
	}
	if err := h.writeFile("/etc/l.toml", []byte("x"), 0o644); err == nil || !strings.Contains(err.Error(), "does not replace links") {
		t.Errorf("writeFile over a link: %v", err)
	}
	if err := h.remove("/etc/l.toml"); err == nil || !strings.Contains(err.Error(), "does not remove links") {
		t.Errorf("remove a link: %v", err)
	}
	if err := h.removeDir("/etc/conf.d"); err != nil {
		t.Errorf("removeDir of a link: %v", err)
	}
	if target, err := os.Readlink(filepath.Join(root, "/etc/conf.d")); err != nil || target != "/srv" {
		t.Errorf("removeDir touched the link: %q %v", target, err)
	}
	// Through the linked directory, into the real one.
	if err := h.writeFile("/etc/conf.d/new.toml", []byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, "/srv/new.toml"); got != "new" {
		t.Errorf("written %q", got)
	}
	if real, link, err := h.resolve("/etc/conf.d/x/y.toml"); err != nil || real != "/srv/x/y.toml" || link != "" {
		t.Errorf("resolve a new path: %q %q %v", real, link, err)
	}
	if real, link, err := h.resolve("/etc/l.toml"); err != nil || real != "/srv/a.toml" || link != "/srv/a.toml" {
		t.Errorf("resolve a link: %q %q %v", real, link, err)
	}
	// Out of the root, absolute or by `..`: inside it.
	link(t, root, "/etc/out", "/../../../../srv/b.toml")
	link(t, root, "/etc/up", "../../../../../../srv/c.txt")
	for p, want := range map[string]string{"/etc/out": "b", "/etc/up": "c"} {
		if b, err := h.readFile(p); err != nil || string(b) != want {
			t.Errorf("read %s: %q %v, want %q", p, b, err, want)
		}
	}
	var dangling *danglingLinkError
	link(t, root, "/etc/gone", "/srv/gone.toml")
	if _, _, err := h.resolve("/etc/gone"); !errors.As(err, &dangling) {
		t.Errorf("resolve a dangling link: %v", err)
	}
	if _, _, err := h.resolve("/etc/gone/x"); err == nil {
		t.Error("resolved a path through a link to a missing directory")
	}
	// A FIFO is an error, not a read that blocks.
	if err := unix.Mkfifo(filepath.Join(root, "srv/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.readFile("/srv/fifo"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("read a FIFO: %v", err)
	}
	if got, err := h.glob("/etc/conf.d/["); err == nil {
		t.Errorf("bad pattern: %q", got)
	}
}
