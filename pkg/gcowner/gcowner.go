// Package gcowner records which process holds the GC roots a shim makes,
// so that collectors can drop the roots of a shim that is gone.
//
// The shim roots a pod's closure with gcroots/storepkg/<owner>-<hash>
// (owner: the pod's sandbox ID) and removes them when the pod is removed.
// A shim that never gets there (SIGKILLed, OOM-killed, the node rebooted)
// would leave them forever, and with them the closure. So before its
// first root the shim writes <StoreRoot>/nix/var/storepkg/owners/<owner>.json
// naming itself (procid.ID: PID, PID namespace, start time), and
// the agent and `storepkg gc` sweep the roots of owners that no longer
// run. Roots without an owner record (an operator's `storepkg fetch
// --gc-root`) are never swept.
package gcowner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

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

// Write records w as the process holding owner's roots (atomically:
// a dot-file renamed into place).
func Write(storeRoot, owner string, w procid.ID) error {
	if err := CheckName(owner); err != nil {
		return err
	}
	dir := ownersDir(storeRoot)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gcowner: %w", err)
	}
	data, err := json.Marshal(w)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+owner+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("gcowner: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, owner+".json")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("gcowner: %w", err)
	}
	return nil
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
}

// Sweep removes the roots, and then the records, of owners whose process
// no longer runs. An owner in another PID namespace (unknown) is kept;
// dryRun only reports.
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
		if err != nil {
			continue // removed meanwhile
		}
		var w procid.ID
		if err := json.Unmarshal(data, &w); err != nil {
			return nil, fmt.Errorf("gcowner: owner record %s: %w", e.Name(), err)
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
