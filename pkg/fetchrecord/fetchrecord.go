// Package fetchrecord is the node-local contract between the shims, which
// substitute pods' closures, and the node agent, which turns those
// substitutions into metrics and pod events.
//
// A shim writes one JSON file per closure fetch, <Dir>/<id>.json, and
// replaces it as the fetch goes on (write a dot-file, then rename, so a
// reader never sees half a record). While the fetch runs its state is
// "fetching" and the file is rewritten at least every HeartbeatInterval;
// the last write has state "done" or "failed". The agent counts each
// completed record once and removes it; it expires a "fetching" record
// whose writer is gone (its PID no longer runs, or the heartbeat stopped).
//
// The package knows nothing of containerd or Kubernetes: a record names
// its pod by namespace, name and UID as the CRI gave them.
package fetchrecord

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/procid"
)

// DefaultDir is where shims write records and the agent reads them. It is
// on the node's /run (a tmpfs): records do not outlive a reboot.
const DefaultDir = "/run/storepkg/fetches"

// Version is the record format's version; readers skip other versions.
const Version = 1

// HeartbeatInterval is the longest a writer leaves a "fetching" record
// unchanged. A reader may take a record older than a few intervals for
// one whose writer died.
const HeartbeatInterval = 10 * time.Second

// MaxRecords bounds the directory: a writer adds no record when it holds
// this many already (no agent consumes them).
const MaxRecords = 1024

// State is where a fetch is.
type State string

const (
	Fetching State = "fetching"
	Done     State = "done"
	Failed   State = "failed"
)

// Pod identifies the pod a fetch is for, from the CRI sandbox metadata
// (annotations io.kubernetes.cri.sandbox-namespace, -name, -uid).
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// Paths counts store paths.
type Paths struct {
	Total   int `json:"total"`   // paths to download, as far as known yet
	Done    int `json:"done"`    // of those, the ones now valid
	Fetched int `json:"fetched"` // of those, the ones this fetch downloaded itself
	Closure int `json:"closure"` // the whole closure, once done
}

// Bytes counts compressed bytes (NAR bytes where a cache gives no size).
type Bytes struct {
	Total int64 `json:"total"`
	Done  int64 `json:"done"`
}

// Refusals counts what the fetch refused from caches.
type Refusals struct {
	Signature int `json:"signature"` // narinfos without a trusted signature
	Hash      int `json:"hash"`      // NARs whose size or hash differed from the signed narinfo
}

// Record is one closure fetch.
type Record struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"` // the file is <ID>.json
	Pod       Pod       `json:"pod"`
	SandboxID string    `json:"sandboxID,omitempty"`
	Roots     []string  `json:"roots"` // the store paths asked for
	State     State     `json:"state"`
	Writer    procid.ID `json:"writer"` // the shim that writes it
	Start     time.Time `json:"start"`
	Updated   time.Time `json:"updated"`
	End       time.Time `json:"end,omitzero"`
	Paths     Paths     `json:"paths"`
	Bytes     Bytes     `json:"bytes"`
	// Caches holds the compressed bytes downloaded from each cache (URL).
	Caches   map[string]int64  `json:"caches,omitempty"`
	Refusals Refusals          `json:"refusals"`
	Error    *fetchapi.Failure `json:"error,omitempty"` // why it failed
	// WaitingForSlot, while not 0, says the fetch waits for one of the
	// node's fetch slots, of which there are this many (runtime option
	// MaxConcurrentFetches); 0 once it has one.
	WaitingForSlot int `json:"waitingForSlot,omitempty"`
}

// Completed reports whether the record is in a final state.
func (r *Record) Completed() bool { return r.State == Done || r.State == Failed }

// Duration is how long the fetch took (until the last update if it has
// not ended).
func (r *Record) Duration() time.Duration {
	end := r.End
	if end.IsZero() {
		end = r.Updated
	}
	if end.Before(r.Start) {
		return 0
	}
	return end.Sub(r.Start)
}

const suffix = ".json"

// ValidID reports whether id can name a record: letters, digits, '.',
// '_' and '-', not starting with '.', at most 200 bytes.
func ValidID(id string) bool {
	if id == "" || len(id) > 200 || id[0] == '.' {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// IDOf returns the record ID a file name in the directory stands for;
// ok is false for anything else (temporary files start with '.').
func IDOf(name string) (id string, ok bool) {
	id, ok = strings.CutSuffix(name, suffix)
	return id, ok && ValidID(id)
}

// File is the record file of id in dir.
func File(dir, id string) string { return filepath.Join(dir, id+suffix) }

// Write replaces the record's file atomically, creating dir if needed.
func Write(dir string, r *Record) error {
	if !ValidID(r.ID) {
		return fmt.Errorf("fetchrecord: invalid record id %q", r.ID)
	}
	r.Version = Version
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+r.ID+".tmp")
	err = os.WriteFile(tmp, data, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		if mkErr := os.MkdirAll(dir, 0o755); mkErr != nil {
			return fmt.Errorf("fetchrecord: %w", mkErr)
		}
		err = os.WriteFile(tmp, data, 0o644)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("fetchrecord: %w", err)
	}
	if err := os.Rename(tmp, File(dir, r.ID)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("fetchrecord: %w", err)
	}
	return nil
}

// Read reads a record file. A record of another Version is an error.
func Read(file string) (*Record, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("fetchrecord: %s: %w", file, err)
	}
	if r.Version != Version {
		return nil, fmt.Errorf("fetchrecord: %s: record version %d, want %d", file, r.Version, Version)
	}
	if id, _ := IDOf(filepath.Base(file)); r.ID != id {
		return nil, fmt.Errorf("fetchrecord: %s: record id %q does not match its file name", file, r.ID)
	}
	return &r, nil
}

// Count returns how many entries dir holds (0 if it does not exist).
func Count(dir string) (int, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return len(names), err
}
