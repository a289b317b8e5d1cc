// Package gcowner records which process holds the GC roots a shim makes,
// so that collectors can drop the roots of a shim that is gone.
//
// The shim roots a pod's closure with gcroots/storepkg/<owner>-<hash>
// (owner: the pod's sandbox ID) and removes them when the pod is removed.
// A shim that never gets there (SIGKILLed, OOM-killed, the node rebooted)
// would leave them forever, and with them the closure. So before its
// first root the shim writes <StoreRoot>/nix/var/storepkg/owners/<owner>.json
// naming itself (procid.ID: PID, PID namespace, start time), durably,
// and makes no root if it cannot; the agent and `storepkg gc` sweep the
// roots of owners that no longer run. Roots without an owner record (an
// operator's `storepkg fetch --gc-root`) are never swept, nor are those
// of an owner whose record cannot be read.
package gcowner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// RootsDir is where the roots are: <StoreRoot>/nix/var/nix/gcroots/storepkg.
func RootsDir(storeRoot string) string {
	return filepath.Join(storeRoot, "nix", "var", "nix", "gcroots", "storepkg")
}

func ownersDir(storeRoot string) string {
	return filepath.Join(storeRoot, "nix", "var", "storepkg", "owners")
}

// RootName is the root of path p held by owner.
func RootName(owner string, p storepath.Path) string { return owner + "-" + p.HashPart() }

// ownerOf splits a root name made by RootName.
func ownerOf(name string) (string, bool) {
	n := len(name) - storepath.HashLen - 1
	if n < 1 || name[n] != '-' {
		return "", false
	}
	if _, err := storepath.ParseBase(name[n+1:] + "-x"); err != nil {
		return "", false
	}
	return name[:n], true
}

// CheckName refuses a root or owner name that is not one plain path
// element.
func CheckName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid GC root name %q", name)
	}
	return nil
}

// Write records w as the process holding owner's roots, atomically and
// durably: a dot-file written and fsynced, renamed into place, and the
// directory fsynced, so that after a crash or a power loss the record is
// either absent or complete, never empty or cut short (which would keep
// its roots for good: Sweep cannot tell whether its owner runs). A
// caller makes roots only once Write has returned nil.
func Write(storeRoot, owner string, w procid.ID) error {
	if err := CheckName(owner); err != nil {
		return err
	}
	data, err := json.Marshal(w)
	if err != nil {
		return err
	}
	if err := writeDurably(ownersDir(storeRoot), owner+".json", data); err != nil {
		return fmt.Errorf("gcowner: writing the owner record of %s: %w", owner, err)
	}
	return nil
}

// fsync is (*os.File).Sync; tests watch it.
var fsync = (*os.File).Sync

func writeDurably(dir, name string, data []byte) (err error) {
	if err := mkdirAllDurably(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = fsync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// mkdirAllDurably is os.MkdirAll, with the parent of each directory it
// creates fsynced.
func mkdirAllDurably(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllDurably(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = fsync(d)
	return errors.Join(err, d.Close())
}

// Remove deletes owner's record (after its roots); a missing one is fine.
func Remove(storeRoot, owner string) error {
	if err := CheckName(owner); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(ownersDir(storeRoot), owner+".json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("gcowner: %w", err)
	}
	return nil
}

// RemoveRoot removes the root symlink name; a missing one is fine,
// anything but a symlink is left alone.
func RemoveRoot(storeRoot, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	link := filepath.Join(RootsDir(storeRoot), name)
	fi, err := os.Lstat(link)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("GC root %s: %w", link, err)
	case fi.Mode()&fs.ModeSymlink == 0:
		return fmt.Errorf("GC root %s is not a symlink; not removing it", link)
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing GC root %s: %w", link, err)
	}
	return nil
}

// SweepResult is what Sweep found.
type SweepResult struct {
	Owners []string // owners found gone, their roots and records removed
	Roots  []string // the roots removed
	// Invalid lists the owner records that could not be read or name no
	// process (empty, cut short, not JSON): whether their owners run
	// cannot be told, so their roots and the records stay until an
	// operator removes them.
	Invalid []InvalidRecord
}

// InvalidRecord is an owner record Sweep could not use.
type InvalidRecord struct {
	Owner string // the record is <StoreRoot>/nix/var/storepkg/owners/<Owner>.json
	Err   error
}

func (r InvalidRecord) Error() string {
	return fmt.Sprintf("owner record %s.json: %v", r.Owner, r.Err)
}

// errNoProcess: a record that parses but names no process.
var errNoProcess = errors.New("names no process")

// Sweep removes the roots, and then the records, of owners whose process
// no longer runs. An owner in another PID namespace (unknown) is kept,
// and so is one whose record is invalid (reported in the result, not an
// error: the other records are swept); dryRun only reports.
func Sweep(storeRoot string, dryRun bool) (*SweepResult, error) {
	res := &SweepResult{}
	entries, err := os.ReadDir(ownersDir(storeRoot))
	if errors.Is(err, fs.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gcowner: %w", err)
	}
	gone := map[string]bool{}
	for _, e := range entries {
		owner, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(ownersDir(storeRoot), e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		var w procid.ID
		if err == nil {
			err = json.Unmarshal(data, &w)
		}
		if err == nil && w.PID <= 0 {
			err = errNoProcess
		}
		if err != nil {
			res.Invalid = append(res.Invalid, InvalidRecord{Owner: owner, Err: err})
			continue
		}
		if alive, known := w.Alive(); known && !alive {
			gone[owner] = true
		}
	}
	if len(gone) == 0 {
		return res, nil
	}
	roots, err := os.ReadDir(RootsDir(storeRoot))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("gcowner: %w", err)
	}
	for _, r := range roots {
		if owner, ok := ownerOf(r.Name()); ok && gone[owner] {
			if !dryRun {
				if err := RemoveRoot(storeRoot, r.Name()); err != nil {
					return res, err
				}
			}
			res.Roots = append(res.Roots, r.Name())
		}
	}
	for owner := range gone {
		if !dryRun {
			if err := Remove(storeRoot, owner); err != nil {
				return res, err
			}
		}
		res.Owners = append(res.Owners, owner)
	}
	return res, nil
}
