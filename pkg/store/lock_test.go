package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/store/storefs"
)

func TestLockPathContention(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	p := fakePath(t, "locked")
	lockFile := s.RealPath(p) + ".lock"

	l1, ok, err := s.LockPath(ctx, p, false)
	if err != nil || !ok {
		t.Fatalf("first LockPath = %v, %v", ok, err)
	}
	if fi, err := os.Stat(lockFile); err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v, %v", fi, err)
	}
	if l, ok, err := s.LockPath(ctx, p, false); err != nil || ok || l != nil {
		t.Fatalf("LockPath(wait=false) on a held lock = %v, %v, %v", l, ok, err)
	}

	// A waiter gets the lock once the holder unlocks. Unlock deletes and
	// marks the file; the waiter, which opened the old file, must notice
	// it is stale and lock a fresh one.
	var acquired atomic.Bool
	done := make(chan *PathLock)
	go func() {
		l, ok, err := s.LockPath(ctx, p, true)
		if err != nil || !ok {
			t.Errorf("waiting LockPath = %v, %v", ok, err)
		}
		acquired.Store(true)
		done <- l
	}()
	time.Sleep(100 * time.Millisecond)
	if acquired.Load() {
		t.Fatal("waiter got a held lock")
	}
	if err := l1.Unlock(); err != nil {
		t.Fatal(err)
	}
	l2 := <-done
	var st1, st2 unix.Stat_t
	if err := unix.Fstat(int(l2.l.File().Fd()), &st1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(lockFile, &st2); err != nil {
		t.Fatalf("waiter holds a lock but %s does not exist: %v", lockFile, err)
	}
	if st1.Ino != st2.Ino || st1.Size != 0 {
		t.Fatalf("waiter holds inode %d (size %d), file is inode %d", st1.Ino, st1.Size, st2.Ino)
	}

	// Cancellation while waiting.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, ok, err := s.LockPath(cctx, p, true); ok || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockPath with expiring context = %v, %v", ok, err)
	}

	if err := l2.Unlock(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockFile); !os.IsNotExist(err) {
		t.Fatalf("Unlock left %s: %v", lockFile, err)
	}
	if err := l2.Unlock(); err != nil { // second Unlock is a no-op
		t.Fatal(err)
	}
}

// TestLockPathOtherProcess contends with flock(1), another process using
// flock(2) on the same file, as Nix does.
func TestLockPathOtherProcess(t *testing.T) {
	flockBin := testenv.LookPath(t, "flock")[0]
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	p := fakePath(t, "xproc")
	lockFile := s.RealPath(p) + ".lock"
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(flockBin, "--close", "-x", lockFile, "sh", "-c", "touch "+ready+"; sleep 30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, ok, err := s.LockPath(ctx, p, false); ok || err != nil {
		t.Fatalf("LockPath while another process holds it = %v, %v", ok, err)
	}
	res := make(chan error, 1)
	go func() {
		l, ok, err := s.LockPath(ctx, p, true)
		if err == nil && !ok {
			err = errors.New("not ok")
		}
		if l != nil {
			l.Unlock()
		}
		res <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cmd.Process.Kill()
	cmd.Wait()
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("lock not acquired after the other process died")
	}
}

func TestAddTempRoots(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	a, b, c := fakePath(t, "a"), fakePath(t, "b"), fakePath(t, "c")
	if err := s.AddTempRoots(ctx); err != nil { // nothing to do
		t.Fatal(err)
	}
	if _, err := os.Stat(s.TempRootsFile()); !os.IsNotExist(err) {
		t.Fatalf("roots file created without roots: %v", err)
	}
	if err := s.AddTempRoots(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	// A second Store of this process shares the file.
	s2 := openStore(t, root)
	if err := s2.AddTempRoots(ctx, c); err != nil {
		t.Fatal(err)
	}
	want := a.Absolute() + "\x00" + b.Absolute() + "\x00" + c.Absolute() + "\x00"
	got, err := os.ReadFile(s.TempRootsFile())
	if err != nil || string(got) != want {
		t.Fatalf("roots file = %q, %v; want %q", got, err, want)
	}
	if !strings.HasSuffix(s.TempRootsFile(), "/nix/var/nix/temproots/"+strconv.Itoa(os.Getpid())) {
		t.Errorf("roots file name %s", s.TempRootsFile())
	}
	// It is write-locked: a collector testing for a dead owner fails.
	f, err := os.OpenFile(s.TempRootsFile(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := storefs.TryLock(f, storefs.Exclusive); ok {
		t.Error("temporary roots file is not locked")
	}
	f.Close()

	s2.Close()
	if _, err := os.Stat(s.TempRootsFile()); err != nil {
		t.Fatalf("closing one of two Stores removed the roots file: %v", err)
	}
	s.Close()
	if _, err := os.Stat(s.TempRootsFile()); !os.IsNotExist(err) {
		t.Fatalf("roots file left after the last Close: %v", err)
	}
}

// TestTempRootsStaleFile: a file of our pid left by a dead process is
// replaced, and a file the collector deleted (and marked) between our
// open and our lock is not used.
func TestTempRootsStaleFile(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	if err := os.WriteFile(s.TempRootsFile(), []byte("/nix/store/old\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := fakePath(t, "p")
	if err := s.AddTempRoots(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(s.TempRootsFile()); string(got) != p.Absolute()+"\x00" {
		t.Fatalf("roots file = %q", got)
	}
}
