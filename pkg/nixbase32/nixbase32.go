// Package nixbase32 implements Nix's base-32 encoding: the alphabet
// "0123456789abcdfghijklmnpqrsvwxyz" (no e, o, u, t) with bytes read
// from the end, as used in store path hashes and narinfo hashes.
package nixbase32

import "fmt"

const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

var digitOf [256]int8

func init() {
	for i := range digitOf {
		digitOf[i] = -1
	}
	for i := 0; i < len(alphabet); i++ {
		digitOf[alphabet[i]] = int8(i)
	}
}

// EncodedLen returns the length of the encoding of n bytes.
func EncodedLen(n int) int {
	if n == 0 {
		return 0
	}
	return (n*8-1)/5 + 1
}

// DecodedLen returns the number of bytes encoded by n characters.
func DecodedLen(n int) int { return n * 5 / 8 }

// EncodeToString encodes b the way Nix's printHash32 does.
func EncodeToString(b []byte) string {
	out := make([]byte, EncodedLen(len(b)))
	for n := len(out) - 1; n >= 0; n-- {
		bit := uint(n * 5)
		i, j := bit/8, bit%8
		c := b[i] >> j
		if int(i)+1 < len(b) {
			c |= b[i+1] << (8 - j)
		}
		out[len(out)-1-n] = alphabet[c&0x1f]
	}
	return string(out)
}

// IsValidChar reports whether c belongs to the alphabet.
func IsValidChar(c byte) bool { return digitOf[c] >= 0 }

// DecodeString decodes s. It rejects characters outside the alphabet and
// encodings with bits set beyond the decoded length, so every byte string
// has exactly one accepted encoding.
func DecodeString(s string) ([]byte, error) {
	out := make([]byte, DecodedLen(len(s)))
	if EncodedLen(len(out)) != len(s) {
		return nil, fmt.Errorf("nixbase32: invalid length %d", len(s))
	}
	for n := 0; n < len(s); n++ {
		c := s[len(s)-1-n]
		d := digitOf[c]
		if d < 0 {
			return nil, fmt.Errorf("nixbase32: invalid character %q at offset %d", c, len(s)-1-n)
		}
		bit := uint(n * 5)
		i, j := bit/8, bit%8
		out[i] |= byte(d) << j
		carry := byte(d) >> (8 - j)
		if j > 3 {
			if int(i)+1 < len(out) {
				out[i+1] |= carry
			} else if carry != 0 {
				return nil, fmt.Errorf("nixbase32: non-zero padding bits in %q", s)
			}
		}
	}
	return out, nil
}
