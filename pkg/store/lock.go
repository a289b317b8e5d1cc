package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/storepath"
)

type lockType int

const (
	lockShared    lockType = unix.LOCK_SH
	lockExclusive lockType = unix.LOCK_EX
)

const (
	// busyRetryDelay is the pause between SQLite attempts that found the
	// database busy beyond the busy timeout.
	busyRetryDelay = 10 * time.Millisecond
	// Lock waits poll with a non-blocking flock, backing off from
	// lockPollMin to lockPollMax: flock(2) itself cannot be cancelled,
	// and a context must be.
	lockPollMin = time.Millisecond
	lockPollMax = 50 * time.Millisecond
)

// openLockFile opens (creating) a lock file the way Nix's openLockFile
// does: read-write, mode 0600, close-on-exec (Go's default).
func openLockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: opening lock file %s: %w", path, err)
	}
	return f, nil
}

// flockTry takes a flock without blocking; ok=false means someone else
// holds a conflicting lock.
func flockTry(f *os.File, t lockType) (ok bool, err error) {
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

// flockWait takes a flock, waiting as long as ctx allows.
func flockWait(ctx context.Context, f *os.File, t lockType) error {
	delay := lockPollMin
	for {
		ok, err := flockTry(f, t)
		if err != nil || ok {
			return err
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
		delay = min(2*delay, lockPollMax)
	}
}

func funlock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_UN)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// sleepCtx sleeps for d or until ctx ends, whichever is first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// PathLock is an exclusive lock on a store path, held through the file
// "<real path>.lock" exactly as Nix's PathLocks holds it, so storepkg
// and Nix (substituting or building the same path) exclude each other.
type PathLock struct {
	f    *os.File
	path string
}

// testHookLockOpened, when set by tests, runs after a lock file has been
// opened and before it is locked, to make the stale-file race repeatable.
var testHookLockOpened func(lockFile string)

// LockPath locks p. With wait=false it returns ok=false at once if
// another holder (any process, or another PathLock in this one) has it;
// with wait=true it waits until it gets the lock or ctx ends.
//
// After getting the flock it checks the file has not gone stale: Nix
// deletes a lock file by unlinking it and then writing one byte into it,
// so a locked file of non-zero size is an unlinked one, and a new holder
// may already have created and locked a fresh file at the same name. Then
// we reopen and try again, as Nix's PathLocks::lockPaths does.
func (s *Store) LockPath(ctx context.Context, p storepath.Path, wait bool) (l *PathLock, ok bool, err error) {
	name := s.RealPath(p) + ".lock"
	for {
		if err := ctx.Err(); err != nil {
			return nil, false, fmt.Errorf("store: locking %s: %w", name, err)
		}
		f, err := openLockFile(name)
		if err != nil {
			return nil, false, err
		}
		if testHookLockOpened != nil {
			testHookLockOpened(name)
		}
		if wait {
			err = flockWait(ctx, f, lockExclusive)
			ok = err == nil
		} else {
			ok, err = flockTry(f, lockExclusive)
		}
		if err != nil || !ok {
			f.Close()
			if err != nil {
				return nil, false, fmt.Errorf("store: locking %s: %w", name, err)
			}
			return nil, false, nil
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("store: stat of lock file %s: %w", name, err)
		}
		if st.Size == 0 {
			return &PathLock{f: f, path: name}, true, nil
		}
		// Stale: we hold a lock on a deleted file. Closing drops it.
		f.Close()
	}
}

// Unlock releases the lock and deletes the lock file the way Nix's
// deleteLockFile does: unlink, then write a byte so that anyone already
// waiting on the old file sees it is stale, then close (which releases
// the flock). The unlink's result is ignored, as in Nix: removing the
// file is tidiness, not correctness.
func (l *PathLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	_ = os.Remove(l.path)
	_, werr := f.Write([]byte("d"))
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("store: unlocking %s: %w", l.path, err)
	}
	return nil
}

// Path returns the lock file's name.
func (l *PathLock) Path() string { return l.path }
