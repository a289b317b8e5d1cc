// Package storepath parses and validates Nix store paths
// (/nix/store/<32 nixbase32 chars>-<name>) with the rules Nix applies.
package storepath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/storepkg/storepkg/pkg/nixbase32"
)

// StoreDir is the only store directory storepkg supports: binary caches
// built for another StoreDir have different hashes and cannot be used.
const StoreDir = "/nix/store"

const (
	// HashLen is the length of the hash part of a store path basename.
	HashLen = 32
	// MaxNameLen is Nix's limit on the name part.
	MaxNameLen = 211
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid store path")

// Path is a validated store path basename, "<hash>-<name>".
// The zero value is not a valid path.
type Path string

// ParseBase validates a basename such as "s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1".
func ParseBase(base string) (Path, error) {
	if len(base) < HashLen+2 || base[HashLen] != '-' {
		return "", fmt.Errorf("%w %q: want <32-char hash>-<name>", ErrInvalid, base)
	}
	if i := badHashChar(base); i >= 0 {
		return "", fmt.Errorf("%w %q: bad hash character %q", ErrInvalid, base, base[i])
	}
	name := base[HashLen+1:]
	if strings.HasPrefix(name, ".") {
		return "", fmt.Errorf("%w %q: name starts with '.'", ErrInvalid, base)
	}
	if err := checkNameChars(name); err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrInvalid, base, err)
	}
	return Path(base), nil
}

// ParseEntryName parses the name of an entry of the store directory the
// way Nix 2.8's StorePath constructor does, and returns its hash part.
// Nix's garbage collector uses it to tell store paths, and the names that
// go with them ("<hash>-foo.lock", "<hash>-foo.storepkg-tmp"), from other
// entries (".links", "tmp-123"). It is laxer than ParseBase: the character
// after the hash is not checked and the name may start with '.'.
func ParseEntryName(base string) (hash string, ok bool) {
	if len(base) < HashLen+2 || badHashChar(base) >= 0 || checkNameChars(base[HashLen+1:]) != nil {
		return "", false
	}
	return base[:HashLen], true
}

// badHashChar returns the index of the first character of base's hash
// part that is not a nixbase32 digit, or -1.
func badHashChar(base string) int {
	for i := 0; i < HashLen; i++ {
		if !nixbase32.IsValidChar(base[i]) {
			return i
		}
	}
	return -1
}

// Parse validates an absolute store path "/nix/store/<hash>-<name>".
// Sub-paths ("/nix/store/…-hello/bin/hello") are refused: callers must
// name store paths, not files inside them.
func Parse(abs string) (Path, error) {
	rest, ok := strings.CutPrefix(abs, StoreDir+"/")
	if !ok {
		return "", fmt.Errorf("%w %q: not in %s", ErrInvalid, abs, StoreDir)
	}
	if strings.Contains(rest, "/") {
		return "", fmt.Errorf("%w %q: names a file inside a store path", ErrInvalid, abs)
	}
	return ParseBase(rest)
}

// checkNameChars checks a non-empty name's length and characters.
func checkNameChars(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("name longer than %d characters", MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("+-._?=", c) >= 0:
		default:
			return fmt.Errorf("bad name character %q", c)
		}
	}
	return nil
}

// Base returns the basename "<hash>-<name>".
func (p Path) Base() string { return string(p) }

// Absolute returns "/nix/store/<hash>-<name>".
func (p Path) Absolute() string { return StoreDir + "/" + string(p) }

// String returns the absolute path, the form users see.
func (p Path) String() string { return p.Absolute() }

// HashPart returns the 32-character hash, the key of a narinfo in a cache.
func (p Path) HashPart() string { return string(p)[:HashLen] }

// Name returns the part after the hash.
func (p Path) Name() string { return string(p)[HashLen+1:] }

// Describe names paths for messages: the first, and how many more.
func Describe(paths []Path) string {
	switch len(paths) {
	case 0:
		return "no paths"
	case 1:
		return paths[0].Absolute()
	}
	return fmt.Sprintf("%s and %d more", paths[0].Absolute(), len(paths)-1)
}
