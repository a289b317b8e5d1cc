package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestFetchPeersFlag: `storepkg fetch --peers FILE` asks the peers the
// file lists, with its token; a peer that fails costs the fetch nothing
// but a detour upstream, and a bad peers file means no peers, not a
// failed fetch.
func TestFetchPeersFlag(t *testing.T) {
	nixtest.Require(t, "nix", "nix-store")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	file := filepath.Join(dir, "hello.txt")
	if err := os.WriteFile(file, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(src), "--add", file))
	key := nixtest.GenerateKey(t, dir, "cli-peers-1")
	cache := filepath.Join(dir, "cache")
	nixtest.Run(t, "nix", "copy", "--store", nixtest.StoreURI(src), "--to", "file://"+cache+"?secret-key="+key.SecretFile, p)

	// The other node answers every request with an error, after checking
	// the token.
	var asked, authorized atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if peer.CheckToken(r, "cli-token") {
			authorized.Add(1)
		}
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	defer other.Close()
	// Named so that it owns the path: the claim goes to it.
	path, err := storepath.Parse(p)
	if err != nil {
		t.Fatal(err)
	}
	otherName := ""
	for i := 0; otherName == ""; i++ {
		n := fmt.Sprintf("other-%d", i)
		if o, _ := peer.Owner([]peer.Peer{{Name: "self"}, {Name: n}}, path); o.Name == n {
			otherName = n
		}
	}
	good, _ := json.Marshal(peer.File{Version: 1, Self: "self", Token: "cli-token",
		Peers: []peer.Peer{{Name: "self", URL: "http://127.0.0.1:1"}, {Name: otherName, URL: other.URL}}})
	bad := []byte(`{"version": 7}`)
	for i, body := range [][]byte{good, bad} {
		pf := filepath.Join(dir, fmt.Sprintf("peers-%d.json", i))
		if err := os.WriteFile(pf, body, 0o600); err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		if _, _, err := runCLI("fetch", "--root", root, "--substituter", "file://"+cache, "--trusted-public-key", key.Public,
			"--peers", pf, p); err != nil {
			t.Fatalf("fetch --peers %s: %v", body, err)
		}
		nixtest.Verify(t, root)
	}
	if asked.Load() == 0 || authorized.Load() != asked.Load() {
		t.Errorf("the other node, owner of the path, had %d requests, %d with the token; want some, all with it", asked.Load(), authorized.Load())
	}
}
