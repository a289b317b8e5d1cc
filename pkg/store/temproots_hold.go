package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// compactSlack is how many records of released roots the roots file may
// carry beyond the number of live ones before it is rewritten: at most
// about twice the live roots plus this many records.
var compactSlack = 256

// HoldTempRoots makes paths temporary roots, as AddTempRoots does, until
// release is called. A long-running process (the agent serving its
// store to peers) holds each path only while it uses it: AddTempRoots'
// roots last as long as the process, so a path it once served could
// never be collected.
//
// Nix's protocol only ever appends to the roots file; released roots
// leave the file when it is rewritten without them, which happens once
// they outnumber the live ones, and only while no collector runs (a
// shared lock on gc.lock: a collector holds it exclusively from before
// it reads the roots files until it is done). A running collector keeps
// whatever roots it was told of until it ends, as with Nix.
func (s *Store) HoldTempRoots(ctx context.Context, paths ...storepath.Path) (release func(), err error) {
	if err := s.addTempRoots(ctx, paths, true); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { s.releaseTempRoots(paths) }) }, nil
}

func (s *Store) releaseTempRoots(paths []storepath.Path) {
	tr := s.roots
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, p := range paths {
		if tr.held[p] > 1 {
			tr.held[p]--
		} else {
			delete(tr.held, p)
		}
	}
	live := len(tr.pinned) + len(tr.held)
	if tr.file == nil || tr.records-live <= live+compactSlack {
		return
	}
	// Failing to compact leaves the file a superset of the live roots:
	// safe, and tried again on the next release.
	_ = s.compactTempRoots()
}

// compactTempRoots rewrites the roots file with the pinned and held
// roots only; tr.mu is held. The new file is written under a hidden
// name (which collectors skip), write-locked like the old one, then
// renamed over it.
func (s *Store) compactTempRoots() (err error) {
	tr := s.roots
	ok, err := storefs.TryLock(tr.gcLock, storefs.Shared)
	if err != nil || !ok {
		return err // a collector runs: not now
	}
	defer func() { err = errors.Join(err, storefs.Unlock(tr.gcLock)) }()

	name := tr.fileName()
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".compact")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if ok, err := storefs.TryLock(f, storefs.Exclusive); err != nil || !ok {
		return errors.Join(err, fmt.Errorf("store: cannot lock %s", tmp))
	}
	var rec []byte
	n := 0
	add := func(p storepath.Path) {
		rec = append(rec, p.Absolute()...)
		rec = append(rec, 0)
		n++
	}
	for p := range tr.pinned {
		add(p)
	}
	for p := range tr.held {
		if !tr.pinned[p] {
			add(p)
		}
	}
	if _, err := f.Write(rec); err != nil {
		return fmt.Errorf("store: rewriting temporary roots: %w", err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("store: rewriting temporary roots: %w", err)
	}
	done = true
	tr.file.Close()
	tr.file = f
	tr.records = n
	return nil
}
