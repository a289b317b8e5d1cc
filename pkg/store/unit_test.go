package store

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/pkg/nixbase32"
)

func TestParseNarHash(t *testing.T) {
	want := sha256.Sum256([]byte("x"))
	for _, s := range []string{
		"sha256:" + hex.EncodeToString(want[:]),
		"sha256:" + nixbase32.EncodeToString(want[:]),
		"sha256-" + base64.StdEncoding.EncodeToString(want[:]),
	} {
		if got, err := parseNarHash(s); err != nil || got != want {
			t.Errorf("parseNarHash(%q) = %x, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "md5:00", "sha256:abc", hex.EncodeToString(want[:])} {
		if _, err := parseNarHash(s); err == nil {
			t.Errorf("parseNarHash(%q) succeeded", s)
		}
	}
}

func TestParseDrvOutputs(t *testing.T) {
	drv := `Derive([("dev","/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x-dev","",""),("out","","r:sha256",""),` +
		`("weird\"name","/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x","sha256","abc")],[],[],"s","/b",[],[])`
	outs, err := parseDrvOutputs([]byte(drv))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(outs)
	want := `[{dev /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x-dev} {out } {weird"name /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x}]`
	if got != want {
		t.Errorf("parseDrvOutputs = %s, want %s", got, want)
	}
	for _, bad := range []string{"", "Derive(", `Derive([("out","/x"`, `Derive([("out","a","b","c")x`, "derive([])"} {
		if _, err := parseDrvOutputs([]byte(bad)); err == nil {
			t.Errorf("parseDrvOutputs(%q) succeeded", bad)
		}
	}
	if outs, err := parseDrvOutputs([]byte("Derive([],[],[],\"\",\"\",[],[])")); err != nil || len(outs) != 0 {
		t.Errorf("empty output list: %v, %v", outs, err)
	}
}

// TestDialUnixLongPath: socket names beyond sun_path's 108 bytes (deep
// store roots) are reached through /proc/self/fd.
func TestDialUnixLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "socket")
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l, err := net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/socket", d.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Write([]byte(line))
	}()
	c, err := dialUnix(context.Background(), sock)
	if err != nil {
		t.Fatalf("dialUnix(%d-byte name): %v", len(sock), err)
	}
	defer c.Close()
	c.Write([]byte("hello\n"))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "hello\n" {
		t.Fatalf("echo = %q, %v", line, err)
	}
}
