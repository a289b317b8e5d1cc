// Package storefs holds the file protocols of a Nix store that need no
// database: Nix's lock files (lock.go) and the removal of read-only
// trees (tree.go). pkg/store builds on them, and so do the store views
// (pkg/store/views), which the shim links without SQLite.
package storefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// LockType is a flock(2) mode.
type LockType int

const (
	Shared    LockType = unix.LOCK_SH
	Exclusive LockType = unix.LOCK_EX
)

// Lock waits poll with a non-blocking flock, backing off from pollMin to
// pollMax: flock(2) itself cannot be cancelled, and a context must be.
const (
	pollMin = time.Millisecond
	pollMax = 10 * time.Millisecond
)

// OpenLockFile opens (creating) a lock file the way Nix's openLockFile
// does: read-write, mode 0600, close-on-exec (Go's default); a symbolic
// link is refused, never followed.
func OpenLockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", path, err)
	}
	return f, nil
}

// TryLock takes a flock without blocking; ok=false means someone else
// holds a conflicting lock.
func TryLock(f *os.File, t LockType) (ok bool, err error) {
	for {
		err := unix.Flock(int(f.Fd()), int(t)|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		default:
			return false, fmt.Errorf("flock %s: %w", f.Name(), err)
		}
	}
}

// WaitLock takes a flock, waiting as long as ctx allows.
func WaitLock(ctx context.Context, f *os.File, t LockType) error {
	delay := pollMin
	for {
		ok, err := TryLock(f, t)
		if err != nil || ok {
			return err
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		delay = min(2*delay, pollMax)
	}
}

// Unlock releases a flock taken with TryLock or WaitLock.
func Unlock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_UN)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// MarkStale writes the byte with which Nix marks a lock file it has
// unlinked: whoever opened the file before the unlink and locks it
// after sees a non-empty file and opens the name again.
func MarkStale(f *os.File) error {
	_, err := f.Write([]byte("d"))
	return err
}

// Lock is an exclusive lock on a lock file, held as Nix's PathLocks
// holds "<store path>.lock".
type Lock struct {
	f    *os.File
	path string
}

// testHookLockOpened, when set by tests, runs after a lock file has been
// opened and before it is locked, to make the stale-file race repeatable.
var testHookLockOpened func(path string)

// Acquire locks the lock file path (creating it). With wait=false it
// returns ok=false at once if another holder (any process, or another
// Lock in this one) has it; with wait=true it waits until it gets the
// lock or ctx ends.
//
// After getting the flock it checks the file has not gone stale: a lock
// file is deleted by unlinking it and then writing one byte into it
// (Delete, MarkStale), so a locked file that is unlinked or not empty is
// a deleted one, and a new holder may already have created and locked a
// fresh file at the same name. Then it opens the name again, as Nix's
// PathLocks::lockPaths does.
func Acquire(ctx context.Context, path string, wait bool) (l *Lock, ok bool, err error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, false, fmt.Errorf("locking %s: %w", path, err)
		}
		f, err := OpenLockFile(path)
		if err != nil {
			return nil, false, err
		}
		if testHookLockOpened != nil {
			testHookLockOpened(path)
		}
		if wait {
			err = WaitLock(ctx, f, Exclusive)
			ok = err == nil
		} else {
			ok, err = TryLock(f, Exclusive)
		}
		if err != nil || !ok {
			f.Close()
			if err != nil {
				return nil, false, fmt.Errorf("locking %s: %w", path, err)
			}
			return nil, false, nil
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("stat of lock file %s: %w", path, err)
		}
		if st.Size == 0 && st.Nlink > 0 {
			return &Lock{f: f, path: path}, true, nil
		}
		// Stale: we hold a lock on a deleted file. Closing drops it.
		f.Close()
	}
}

// Path returns the lock file's name.
func (l *Lock) Path() string { return l.path }

// File returns the open, locked lock file.
func (l *Lock) File() *os.File { return l.f }

// Release releases the lock and leaves the lock file for the next
// holder. Releasing twice is a no-op.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Delete releases the lock and deletes the lock file the way Nix's
// deleteLockFile does: unlink, then mark the file stale (MarkStale) so
// that anyone already waiting on it opens the name again, then close
// (which releases the flock). The unlink's result is ignored, as in Nix:
// removing the file is tidiness, not correctness. Deleting a released
// lock is a no-op.
func (l *Lock) Delete() error {
	if l == nil || l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	_ = os.Remove(l.path)
	werr := MarkStale(f)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("deleting lock file %s: %w", l.path, err)
	}
	return nil
}

// DeleteLockFile removes the lock file path if nobody holds it, as Nix's
// collector does with deleteLockFile: it takes the lock without waiting
// (never creating the file), unlinks it and marks it stale, so that a
// process that opened it before the unlink and locks it after starts
// again. held=true means someone holds the lock; the file is left alone.
// st is the file's status before the unlink, nil when there was nothing
// to remove (missing, or removed by someone else meanwhile).
func DeleteLockFile(path string) (st *unix.Stat_t, held bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	ok, err := TryLock(f, Exclusive)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		return nil, true, nil
	}
	st = new(unix.Stat_t)
	if err := unix.Fstat(int(f.Fd()), st); err != nil {
		return nil, false, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Nlink == 0 {
		return nil, false, nil // someone else removed it meanwhile
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if err := MarkStale(f); err != nil {
		return st, false, fmt.Errorf("marking deleted lock file %s: %w", path, err)
	}
	return st, false, nil
}
