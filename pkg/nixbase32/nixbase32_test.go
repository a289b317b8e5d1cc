package nixbase32

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
)

func TestKnownVector(t *testing.T) {
	sum := sha256.Sum256(nil)
	if got, want := EncodeToString(sum[:]), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"; got != want {
		t.Fatalf("EncodeToString(sha256(\"\")) = %s, want %s", got, want)
	}
}

// TestAgainstNix compares with `nix hash to-base32` on a few digests.
func TestAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix")
	var hexes []string
	var sums [][32]byte
	for i := 0; i < 8; i++ {
		s := sha256.Sum256([]byte{byte(i)})
		sums = append(sums, s)
		hexes = append(hexes, hex.EncodeToString(s[:]))
	}
	out, err := nixtest.Cmd("nix", append([]string{"hash", "to-base32", "--type", "sha256"}, hexes...)...).Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(out))
	for i, s := range sums {
		if EncodeToString(s[:]) != lines[i] {
			t.Errorf("digest %d: ours %s, nix %s", i, EncodeToString(s[:]), lines[i])
		}
		back, err := DecodeString(lines[i])
		if err != nil || !bytes.Equal(back, s[:]) {
			t.Errorf("DecodeString(%s) = %x, %v", lines[i], back, err)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, s := range []string{
		"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", // 'e' is not in the alphabet
		"zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", // sets bits past 256
		"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7",  // odd length
	} {
		if _, err := DecodeString(s); err == nil {
			t.Errorf("DecodeString(%q) accepted", s)
		}
	}
}

func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		s := EncodeToString(b)
		back, err := DecodeString(s)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("round trip of %x via %q: %x, %v", b, s, back, err)
		}
	})
}
