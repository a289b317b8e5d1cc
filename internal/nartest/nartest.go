// Package nartest builds NAR byte streams token by token, so tests can
// write malformed archives that no real tool would produce.
package nartest

import (
	"bytes"
	"encoding/binary"
)

// Raw is a string written with explicit padding bytes (to test padding rules).
type Raw struct {
	S   string
	Pad []byte
}

// Encode builds a NAR from tokens: a string is written length-prefixed
// and zero-padded, a uint64 as a bare little-endian number, []byte as is.
func Encode(tokens ...any) []byte {
	var b bytes.Buffer
	for _, t := range tokens {
		switch t := t.(type) {
		case string:
			binary.Write(&b, binary.LittleEndian, uint64(len(t)))
			b.WriteString(t)
			b.Write(make([]byte, (8-len(t)%8)%8))
		case Raw:
			binary.Write(&b, binary.LittleEndian, uint64(len(t.S)))
			b.WriteString(t.S)
			b.Write(t.Pad)
		case uint64:
			binary.Write(&b, binary.LittleEndian, t)
		case []byte:
			b.Write(t)
		default:
			panic("nartest: unsupported token type")
		}
	}
	return b.Bytes()
}

// File is a regular file node.
func File(contents string) []any {
	return []any{"(", "type", "regular", "contents", contents, ")"}
}

// Symlink is a symlink node.
func Symlink(target string) []any {
	return []any{"(", "type", "symlink", "target", target, ")"}
}

// Dir is a directory node with the given entries, in the order given.
func Dir(entries ...[]any) []any {
	out := []any{"(", "type", "directory"}
	for _, e := range entries {
		out = append(out, e...)
	}
	return append(out, ")")
}

// Entry is one directory entry.
func Entry(name string, node []any) []any {
	return append(append([]any{"entry", "(", "name", name, "node"}, node...), ")")
}

// Archive prefixes the magic.
func Archive(node []any) []byte { return Encode(append([]any{"nix-archive-1"}, node...)...) }
