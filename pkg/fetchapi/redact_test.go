package fetchapi

import "testing"

func TestRedactURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://cache.example/c?priority=1":  "https://cache.example/c?priority=1",
		"https://alice:s3cret@cache.example/": "https://alice:xxxxx@cache.example/",
		"https://s3cret@cache.example":        "https://xxxxx@cache.example",
		"https://alice:xxxxx@cache.example":   "https://alice:xxxxx@cache.example",
		"cache:s3cret@host":                   "xxxxx@host",                 // opaque
		"http://[::1s3cret@cache.example":     "http://xxxxx@cache.example", // does not parse
		"file:///var/cache/nix":               "file:///var/cache/nix",
	} {
		if got := RedactURL(raw); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", raw, got, want)
		}
	}
}
