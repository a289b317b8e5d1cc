package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/agent"
)

// TestPeerFlagsOff: --peer-sharing=false removes the node's peers file, so
// its fetches stop using peers; an agent without a node name (run by
// hand, outside the DaemonSet) discovers nothing and leaves the file.
func TestPeerFlagsOff(t *testing.T) {
	ctx := context.Background()
	log := logrus.NewEntry(logrus.New())
	file := filepath.Join(t.TempDir(), "peers.json")
	write := func() {
		t.Helper()
		if err := os.WriteFile(file, []byte(`{"version":1}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	write()
	cfg, err := (&peerFlags{sharing: true, file: file}).config(ctx, log, "")
	if err != nil || cfg != nil {
		t.Fatalf("no node name: %+v, %v", cfg, err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("without a node name the peers file was touched: %v", err)
	}

	cfg, err = (&peerFlags{sharing: false, file: file}).config(ctx, log, "node-a")
	if err != nil || cfg != nil {
		t.Fatalf("sharing off: %+v, %v", cfg, err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("sharing off left the peers file: %v", err)
	}
	// Off again, nothing to remove: no error.
	if _, err := (&peerFlags{sharing: false, file: file}).config(ctx, log, "node-a"); err != nil {
		t.Error(err)
	}
}

// TestPeerSharingOffWithStaticPeers: --peer-sharing=false wins over
// --peers-static: no peer list, no token, so nothing is served.
func TestPeerSharingOffWithStaticPeers(t *testing.T) {
	dir := t.TempDir()
	static := filepath.Join(dir, "static.json")
	body := `{"version":1,"self":"node-a","token":"0123456789abcdefghijklmnop","peers":[{"name":"node-a","url":"http://127.0.0.1:7420"}]}`
	if err := os.WriteFile(static, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	log := logrus.NewEntry(logrus.New())
	var on agent.Config
	if err := (&peerFlags{sharing: true}).apply(context.Background(), log, "", static, &on); err != nil {
		t.Fatal(err)
	}
	if on.PeerToken == "" || on.Peers == nil || on.NodeName != "node-a" {
		t.Fatalf("sharing on: token %q, peers set %v, node %q", on.PeerToken, on.Peers != nil, on.NodeName)
	}
	var off agent.Config
	if err := (&peerFlags{sharing: false, file: filepath.Join(dir, "peers.json")}).apply(context.Background(), log, "", static, &off); err != nil {
		t.Fatal(err)
	}
	if off.PeerToken != "" || off.Peers != nil {
		t.Errorf("sharing off: token %q, peers set %v", off.PeerToken, off.Peers != nil)
	}
}
