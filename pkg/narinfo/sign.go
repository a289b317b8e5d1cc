package narinfo

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ErrUntrusted is wrapped by every VerifySignatures failure.
var ErrUntrusted = errors.New("no trusted signature")

// PublicKey is a named ed25519 key, written "name:base64" as in Nix's
// trusted-public-keys.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// ParsePublicKey parses "name:base64(32 bytes)".
func ParsePublicKey(s string) (PublicKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || name == "" {
		return PublicKey{}, fmt.Errorf("public key %q: want name:base64", s)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("public key %q: not a base64 ed25519 public key", name)
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(raw)}, nil
}

func (k PublicKey) String() string { return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key) }

// SecretKey is a named ed25519 private key, written "name:base64(64 bytes)"
// as `nix key generate-secret` prints it.
type SecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// ParseSecretKey parses "name:base64(64 bytes)".
func ParseSecretKey(s string) (SecretKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || name == "" {
		return SecretKey{}, fmt.Errorf("secret key: want name:base64")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return SecretKey{}, fmt.Errorf("secret key %q: not a base64 ed25519 private key", name)
	}
	return SecretKey{Name: name, Key: ed25519.PrivateKey(raw)}, nil
}

// Public returns the matching public key.
func (k SecretKey) Public() PublicKey {
	return PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Sign returns the "name:base64sig" signature of ni's fingerprint.
func (k SecretKey) Sign(ni *NarInfo) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, []byte(ni.Fingerprint())))
}

// VerifySignatures reports whether one of ni's signatures verifies against
// one of keys. On failure the error says which keys signed and which are
// trusted, so an operator can see a missing or rotated key at once.
func (ni *NarInfo) VerifySignatures(keys []PublicKey) error {
	if len(ni.Sigs) == 0 {
		return fmt.Errorf("%w: unsigned (trusted: %s)", ErrUntrusted, keyNames(keys))
	}
	fp := []byte(ni.Fingerprint())
	var signers []string
	for _, sig := range ni.Sigs {
		name, b64, _ := strings.Cut(sig, ":")
		signers = append(signers, name)
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(raw) != ed25519.SignatureSize {
			continue
		}
		for _, k := range keys {
			if k.Name == name && ed25519.Verify(k.Key, fp, raw) {
				return nil
			}
		}
	}
	for _, k := range keys {
		for _, s := range signers {
			if k.Name == s {
				return fmt.Errorf("%w: signature by %s does not verify (narinfo altered or signed for other contents)", ErrUntrusted, s)
			}
		}
	}
	return fmt.Errorf("%w (signed by %s, trusted: %s)", ErrUntrusted, strings.Join(signers, ", "), keyNames(keys))
}

func keyNames(keys []PublicKey) string {
	if len(keys) == 0 {
		return "none"
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.Name
	}
	return strings.Join(names, ", ")
}
