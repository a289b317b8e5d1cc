package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
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
