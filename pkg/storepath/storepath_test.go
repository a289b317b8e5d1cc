package storepath

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	p, err := Parse("/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1")
	if err != nil {
		t.Fatal(err)
	}
	if p.HashPart() != "s66mzxpvicwk07gjbjfw9izjfa797vsw" || p.Name() != "hello-2.12.1" {
		t.Errorf("parts: %q %q", p.HashPart(), p.Name())
	}
	for _, bad := range []string{
		"/usr/bin/hello",
		"/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-hello/bin/hello",
		"/nix/store/../etc/passwd",
		"/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vse-hello", // 'e' in hash
		"/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-",
		"/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-.hidden",
		"/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-a b",
		"/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-" + strings.Repeat("x", 212),
		"/nix/store/short-hello",
	} {
		if _, err := Parse(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestParseEntryName: store directory entries are told apart as Nix 2.8's
// collector tells them, more laxly than Parse.
func TestParseEntryName(t *testing.T) {
	h := "0123456789abcdfghijklmnpqrsvwxyz"
	for name, want := range map[string]bool{
		h + "-hello":                       true,
		h + "-hello.lock":                  true,
		h + "-x.storepkg-tmp":              true,
		h + "_odd-separator":               true, // Nix 2.8 does not check the 33rd character
		h + "-.dot":                        true, // nor a leading dot
		h + "-":                            false,
		h + "-a b":                         false,
		"e" + h[1:] + "-x":                 false,
		".links":                           false,
		"tmp-1234":                         false,
		h + "-" + strings.Repeat("x", 212): false,
	} {
		if _, ok := ParseEntryName(name); ok != want {
			t.Errorf("ParseEntryName(%q) = %v, want %v", name, ok, want)
		}
	}
	if hash, _ := ParseEntryName(h + "-hello.lock"); hash != h {
		t.Errorf("ParseEntryName hash part = %q", hash)
	}
}

func TestDescribe(t *testing.T) {
	a, err := Parse("/nix/store/00000000000000000000000000000000-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("/nix/store/11111111111111111111111111111111-b")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		paths []Path
		want  string
	}{
		{nil, "no paths"},
		{[]Path{a}, a.Absolute()},
		{[]Path{a, b, b}, a.Absolute() + " and 2 more"},
	} {
		if got := Describe(c.paths); got != c.want {
			t.Errorf("Describe(%v) = %q, want %q", c.paths, got, c.want)
		}
	}
}
