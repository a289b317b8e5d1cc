package storefs

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAcquireStale replays the race Nix guards against: we open the lock
// file, then its holder deletes it (Nix's deleteLockFile: unlink, write a
// byte, close) before we lock it. We must not trust the lock on the dead
// file.
func TestAcquireStale(t *testing.T) {
	ctx := context.Background()
	lockFile := filepath.Join(t.TempDir(), "stale.lock")

	holder, err := OpenLockFile(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := TryLock(holder, Exclusive); !ok || err != nil {
		t.Fatal(ok, err)
	}
	var opens atomic.Int32
	testHookLockOpened = func(name string) {
		if name == lockFile && opens.Add(1) == 1 {
			// We have opened the old file; the holder deletes it now.
			os.Remove(lockFile)
			holder.Write([]byte("d"))
			holder.Close()
		}
	}
	defer func() { testHookLockOpened = nil }()

	l, ok, err := Acquire(ctx, lockFile, true)
	if err != nil || !ok {
		t.Fatalf("Acquire = %v, %v", ok, err)
	}
	defer l.Delete()
	if n := opens.Load(); n != 2 {
		t.Errorf("lock file opened %d times, want 2 (stale, then fresh)", n)
	}
	var st1, st2 unix.Stat_t
	unix.Fstat(int(l.File().Fd()), &st1)
	if err := unix.Stat(lockFile, &st2); err != nil || st1.Ino != st2.Ino || st1.Size != 0 {
		t.Fatalf("lock held on inode %d size %d; file: %d, %v", st1.Ino, st1.Size, st2.Ino, err)
	}
}

// TestDeleteLockFile: a free lock file is deleted and marked, a held one
// left alone, a missing one is not an error.
func TestDeleteLockFile(t *testing.T) {
	ctx := context.Background()
	lockFile := filepath.Join(t.TempDir(), "x.lock")
	if st, held, err := DeleteLockFile(lockFile); st != nil || held || err != nil {
		t.Fatalf("missing file: %v, %v, %v", st, held, err)
	}
	l, ok, err := Acquire(ctx, lockFile, false)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, held, err := DeleteLockFile(lockFile); !held || err != nil {
		t.Fatalf("held lock: held=%v, %v", held, err)
	}
	waiter, err := OpenLockFile(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if st, held, err := DeleteLockFile(lockFile); st == nil || held || err != nil {
		t.Fatalf("free lock: %v, %v, %v", st, held, err)
	}
	if _, err := os.Lstat(lockFile); !os.IsNotExist(err) {
		t.Errorf("lock file still there: %v", err)
	}
	if fi, err := waiter.Stat(); err != nil || fi.Size() == 0 {
		t.Errorf("deleted lock file not marked stale: %v, %v", fi, err)
	}
}
