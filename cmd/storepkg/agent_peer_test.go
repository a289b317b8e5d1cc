package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/pkg/agent"
)

func TestStaticPeers(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "peers.json")
	good := `{"version":1,"self":"node-b","token":"0123456789abcdef-tok","peers":[{"name":"node-a","url":"http://127.0.0.1:7001"},{"name":"node-b","url":"http://127.0.0.1:7002"}]}`
	if err := os.WriteFile(f, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg agent.Config
	if err := staticPeers(&cfg, f); err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "node-b" || cfg.PeerToken != "0123456789abcdef-tok" || cfg.Peers == nil || len(cfg.Peers()) != 2 {
		t.Errorf("from %s: node %q, token %q, peers set %v", f, cfg.NodeName, cfg.PeerToken, cfg.Peers != nil)
	}
	// A token file's token and a node name stay; a node name that is not
	// the file's self is refused.
	cfg = agent.Config{NodeName: "node-b", PeerToken: "from-token-file-xxxx"}
	if err := staticPeers(&cfg, f); err != nil || cfg.PeerToken != "from-token-file-xxxx" {
		t.Errorf("token %q, %v", cfg.PeerToken, err)
	}
	cfg = agent.Config{NodeName: "node-c"}
	if err := staticPeers(&cfg, f); err == nil || !strings.Contains(err.Error(), `"node-c"`) {
		t.Errorf("node name not in the file: %v", err)
	}
	for name, content := range map[string]string{"missing.json": "", "bad.json": `{"version":1,"self":"x"`} {
		p := filepath.Join(dir, name)
		if content != "" {
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := staticPeers(&agent.Config{}, p); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "--peers-static") {
			t.Errorf("%s: %v, want an error naming the flag and the file", name, err)
		}
	}
}
