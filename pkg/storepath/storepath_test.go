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
