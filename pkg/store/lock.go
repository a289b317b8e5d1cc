package store

import (
	"context"
	"fmt"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// PathLock is an exclusive lock on a store path, held through the file
// "<real path>.lock" exactly as Nix's PathLocks holds it (storefs.Lock),
// so storepkg and Nix (substituting or building the same path) exclude
// each other.
type PathLock struct {
	l *storefs.Lock
}

// LockPath locks p. With wait=false it returns ok=false at once if
// another holder (any process, or another PathLock in this one) has it;
// with wait=true it waits until it gets the lock or ctx ends. A lock
// file Nix or we deleted while we were opening it is noticed and the
// lock taken on the new one (storefs.Acquire).
func (s *Store) LockPath(ctx context.Context, p storepath.Path, wait bool) (l *PathLock, ok bool, err error) {
	fl, ok, err := storefs.Acquire(ctx, s.RealPath(p)+".lock", wait)
	if err != nil {
		return nil, false, fmt.Errorf("store: %w", err)
	}
	if !ok {
		return nil, false, nil
	}
	return &PathLock{l: fl}, true, nil
}

// Unlock releases the lock and deletes the lock file the way Nix's
// deleteLockFile does (storefs.Lock.Delete). Unlocking twice is a no-op.
func (l *PathLock) Unlock() error {
	if l == nil {
		return nil
	}
	if err := l.l.Delete(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Path returns the lock file's name.
func (l *PathLock) Path() string { return l.l.Path() }
