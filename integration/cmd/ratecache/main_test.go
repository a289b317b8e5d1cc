package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestRateShared: two NAR downloads at once share one limit (1 MB at
// 4 MB/s each, so 0.5 s for both, not 0.25), and the stats count each
// body byte once, by kind.
func TestRateShared(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	nar := make([]byte, 1<<20)
	for name, b := range map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n"), "x.narinfo": []byte("StorePath: x\n"), "nar/a.nar": nar, "nar/b.nar": nar} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(&server{files: http.FileServer(http.Dir(dir)), lim: &limiter{rate: 4e6}, stats: Stats{Nars: map[string]int64{}}})
	defer srv.Close()
	get := func(path string) int64 {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Error(err)
			return 0
		}
		defer resp.Body.Close()
		n, _ := io.Copy(io.Discard, resp.Body)
		return n
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range []string{"/nar/a.nar", "/nar/b.nar"} {
		wg.Add(1)
		go func() { defer wg.Done(); get(p) }()
	}
	wg.Wait()
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("2 MiB at 4 MB/s shared in %v, want >= 0.5s", d)
	}
	get("/x.narinfo")
	get("/missing.narinfo")
	resp, err := http.Get(srv.URL + statsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.NarBytes != 2<<20 || st.NarinfoBytes != 13 || st.NotFound != 1 || st.Nars["/nar/a.nar"] != 1 {
		t.Errorf("stats %+v", st)
	}
	if r, err := parseRate("50MB"); err != nil || r != 50e6 {
		t.Errorf("parseRate(50MB) = %v, %v", r, err)
	}
	if _, err := parseRate("fast"); err == nil {
		t.Error("parseRate(fast): no error")
	}
}
