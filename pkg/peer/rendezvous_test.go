package peer_test

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestOwner: the owner is the peer with the highest score by the
// contract's formula, whatever the list's order, and a peer leaving
// moves only the paths it owned.
func TestOwner(t *testing.T) {
	if _, ok := peer.Owner(nil, "00000000000000000000000000000000-x"); ok {
		t.Error("an owner among no peers")
	}
	var peers []peer.Peer
	for i := range 5 {
		peers = append(peers, peer.Peer{Name: fmt.Sprintf("node-%d", i)})
	}
	reversed := []peer.Peer{peers[4], peers[3], peers[2], peers[1], peers[0]}
	counts := map[string]int{}
	for i := range 1000 {
		p, err := storepath.ParseBase(fmt.Sprintf("%032d-p", i))
		if err != nil {
			t.Fatal(err)
		}
		o, _ := peer.Owner(peers, p)
		if o2, _ := peer.Owner(reversed, p); o2 != o {
			t.Fatalf("%s: owner %s, or %s with the list reversed", p, o.Name, o2.Name)
		}
		// The contract's formula, computed here on its own.
		var best uint64
		var want string
		for _, q := range peers {
			sum := sha256.Sum256([]byte(q.Name + "\x00" + p.HashPart()))
			if s := binary.BigEndian.Uint64(sum[:8]); want == "" || s > best {
				best, want = s, q.Name
			}
		}
		if o.Name != want {
			t.Fatalf("%s: owner %s, want %s", p, o.Name, want)
		}
		counts[o.Name]++
		// node-2 leaves: only its paths move.
		if o3, _ := peer.Owner([]peer.Peer{peers[0], peers[1], peers[3], peers[4]}, p); o.Name != "node-2" && o3 != o {
			t.Fatalf("%s moved from %s to %s when node-2 left", p, o.Name, o3.Name)
		}
	}
	for _, q := range peers {
		if counts[q.Name] < 120 {
			t.Errorf("%s owns %d of 1000 paths: %v", q.Name, counts[q.Name], counts)
		}
	}
	// A tie (the same name twice) goes to the smaller name: equal here.
	p := storepath.Path("00000000000000000000000000000000-x")
	if o, _ := peer.Owner([]peer.Peer{{Name: "a", URL: "1"}, {Name: "a", URL: "2"}}, p); o.URL != "1" {
		t.Errorf("tie: %v", o)
	}
}
