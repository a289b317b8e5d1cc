package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPeerToken(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"0123456789abcdef0123\n":     "",
		"  tok-of-sixteen-chars  \n": "",
		"":                           "empty",
		"\n":                         "empty",
		"short\n":                    "at least 16",
		"two words-xxxxxxxxxx":       "one word",
	} {
		f := filepath.Join(dir, "token")
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		tok, err := readPeerToken(f)
		switch {
		case want == "" && (err != nil || tok != strings.TrimSpace(content)):
			t.Errorf("%q: %q, %v", content, tok, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), f)):
			t.Errorf("%q: %v, want an error naming %s and saying %q", content, err, f, want)
		}
	}
	if _, err := readPeerToken(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--peer-token-file") {
		t.Errorf("missing file: %v", err)
	}
}
