package peer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
)

// DefaultFile is where the node agent writes the peers file and where the
// shim's fetch children read it.
const DefaultFile = "/run/storepkg/peers/peers.json"

// FileVersion is the only peers file version this code reads.
const FileVersion = 1

// maxFileSize bounds what LoadFile reads: a peer list of thousands of
// nodes is well under it.
const maxFileSize = 16 << 20

// File is the peers file: which node this is, the token its peers'
// listeners want, and every peer (this node among them).
type File struct {
	Version int    `json:"version"`
	Self    string `json:"self"`
	Token   string `json:"token"`
	Peers   []Peer `json:"peers"`
}

// LoadFile reads and checks the peers file at path. A missing file means
// no peers: it returns nil and no error. Any other failure is an error
// naming the file and the field at fault; callers fetch without peers
// then (peers are an optimisation, never a reason to fail).
func LoadFile(path string) (*File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("peers file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("peers file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("peers file %s: not a regular file", path)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("peers file %s: %d bytes, more than the %d a peers file may have", path, fi.Size(), maxFileSize)
	}
	var pf File
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pf); err != nil {
		return nil, fmt.Errorf("peers file %s: %w", path, err)
	}
	if err := pf.Validate(); err != nil {
		return nil, fmt.Errorf("peers file %s: %w", path, err)
	}
	return &pf, nil
}

// Validate checks what a fetch relies on: the version, a token, peers
// with distinct names and http(s) URLs, and self among them.
func (f *File) Validate() error {
	if f.Version != FileVersion {
		return fmt.Errorf("version %d, want %d", f.Version, FileVersion)
	}
	if f.Token == "" {
		return errors.New("token: empty (every peer request carries it)")
	}
	if f.Self == "" {
		return errors.New("self: empty")
	}
	seen := map[string]bool{}
	for i, p := range f.Peers {
		if p.Name == "" {
			return fmt.Errorf("peers[%d]: name: empty", i)
		}
		if seen[p.Name] {
			return fmt.Errorf("peers[%d]: name %q listed twice", i, p.Name)
		}
		seen[p.Name] = true
		u, err := url.Parse(p.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			return fmt.Errorf("peers[%d] (%s): url %q: want http(s)://host:port with no credentials or query", i, p.Name, p.URL)
		}
	}
	if !seen[f.Self] {
		return fmt.Errorf("self %q is not one of the peers", f.Self)
	}
	return nil
}

// Lookup returns the peer named name.
func (f *File) Lookup(name string) (Peer, bool) {
	for _, p := range f.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return Peer{}, false
}
