package peer

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// Owner returns the peer that coordinates path: the one maximising the
// first 8 bytes (big-endian) of sha256(name + "\x00" + the path's hash
// part), ties to the smaller name. Every node computes the same owner
// from the same list, and a node joining or leaving moves only the paths
// it owns or comes to own. ok is false for an empty list.
func Owner(peers []Peer, path storepath.Path) (owner Peer, ok bool) {
	var best uint64
	for _, p := range peers {
		s := score(p.Name, path)
		if !ok || s > best || (s == best && p.Name < owner.Name) {
			owner, best, ok = p, s, true
		}
	}
	return owner, ok
}

func score(name string, path storepath.Path) uint64 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(path.HashPart()))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
