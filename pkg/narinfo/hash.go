package narinfo

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/storepkg/storepkg/pkg/nixbase32"
)

// Hash is a SHA-256 digest as narinfo files carry it.
type Hash [32]byte

// ParseHash accepts the encodings Nix writes and reads for SHA-256:
// "sha256:<nix32>", "sha256:<base16>", "sha256:<base64>" and SRI
// "sha256-<base64>". Other algorithms are refused: Nix signs NAR hashes
// as SHA-256 only.
func ParseHash(s string) (Hash, error) {
	var h Hash
	var digest string
	var sri bool
	if rest, ok := strings.CutPrefix(s, "sha256:"); ok {
		digest = rest
	} else if rest, ok := strings.CutPrefix(s, "sha256-"); ok {
		digest, sri = rest, true
	} else {
		algo, _, _ := strings.Cut(s, ":")
		return h, fmt.Errorf("hash %q: unsupported algorithm %q (want sha256)", s, algo)
	}
	var b []byte
	var err error
	switch {
	case sri && len(digest) == base64.StdEncoding.EncodedLen(32):
		b, err = base64.StdEncoding.Strict().DecodeString(digest)
	case sri:
		err = fmt.Errorf("SRI digest has %d characters, want 44", len(digest))
	case len(digest) == 64:
		b, err = hex.DecodeString(digest)
	case len(digest) == nixbase32.EncodedLen(32):
		b, err = nixbase32.DecodeString(digest)
	case len(digest) == base64.StdEncoding.EncodedLen(32):
		b, err = base64.StdEncoding.Strict().DecodeString(digest)
	default:
		err = fmt.Errorf("digest has %d characters, not a sha256 in base16, nix32 or base64", len(digest))
	}
	if err != nil {
		return h, fmt.Errorf("hash %q: %w", s, err)
	}
	copy(h[:], b)
	return h, nil
}

// NixString returns "sha256:<nix32>", the form used in fingerprints.
func (h Hash) NixString() string { return "sha256:" + nixbase32.EncodeToString(h[:]) }

// Base16 returns "sha256:<hex>", the form Nix's database stores.
func (h Hash) Base16() string { return "sha256:" + hex.EncodeToString(h[:]) }

func (h Hash) String() string { return h.NixString() }

// sri returns "sha256-<base64>".
func (h Hash) sri() string { return "sha256-" + base64.StdEncoding.EncodeToString(h[:]) }
