// Package fetchslot bounds how many closure fetches run at once on a
// node, across independent processes (one shim per pod, or storepkg
// fetch run by hand) and with no daemon: a fetch runs only while it
// holds one of N slots, lock files under a node directory.
//
// A slot is an exclusive flock(2) on <dir>/slot-<i>, i < N. The kernel
// drops the lock when the last descriptor of its open file goes, so a
// holder killed by SIGKILL leaks no slot, and a holder may hand the
// descriptor to a child process (exec.Cmd.ExtraFiles), which then holds
// the slot until it exits.
//
// Waiters queue in arrival order: each makes a ticket <dir>/queue/<seq>-…
// and holds an exclusive flock on it while it waits. A waiter blocks in
// flock on the ticket just before its own, so it wakes when that waiter
// leaves the queue or dies; only the head of the queue polls the slots.
// A node with a thousand waiting fetches thus has one poller, not a
// thousand, and a slot that frees goes to the oldest waiter.
package fetchslot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is where shims keep the node's slots: on /run, so nothing
// outlives a reboot.
const DefaultDir = "/run/storepkg/fetch-slots"

// pollInterval is how often the head of the queue tries the slots.
const pollInterval = 100 * time.Millisecond

// Slot is a held slot.
type Slot struct {
	f     *os.File
	index int
}

// Index is the slot's number, below the bound it was acquired with.
func (s *Slot) Index() int { return s.index }

// File is the locked file: a child that inherits it holds the slot with
// its parent, and alone once the parent calls Release.
func (s *Slot) File() *os.File { return s.f }

// Release gives the slot up (unless a child still holds it).
func (s *Slot) Release() error { return s.f.Close() }

// TryAcquire takes a free slot without waiting, but only when no fetch
// waits for one: a newcomer never overtakes the queue. ok is false when
// none was taken.
func TryAcquire(dir string, n int) (s *Slot, ok bool, err error) {
	if err := prepare(dir, n); err != nil {
		return nil, false, err
	}
	names, err := tickets(dir)
	if err != nil || len(names) > 0 {
		return nil, false, err
	}
	s, err = tryAny(dir, n)
	return s, s != nil, err
}

// Acquire waits for a slot of the n under dir, in arrival order, until
// ctx ends. waiting, if set, is called once when the slot is not free at
// once. Nothing of the wait is left behind when ctx ends.
func Acquire(ctx context.Context, dir string, n int, waiting func()) (*Slot, error) {
	if err := prepare(dir, n); err != nil {
		return nil, err
	}
	t, err := enqueue(dir)
	if err != nil {
		return nil, err
	}
	defer t.leave()
	notified := false
	notify := func() {
		if !notified && waiting != nil {
			waiting()
		}
		notified = true
	}
	for {
		pred, err := t.predecessor()
		if err != nil {
			return nil, err
		}
		if pred == "" {
			break
		}
		notify()
		if err := waitGone(ctx, filepath.Join(dir, queueDir, pred)); err != nil {
			return nil, err
		}
	}
	// The head of the queue: poll the slots.
	for {
		s, err := tryAny(dir, n)
		if err != nil || s != nil {
			return s, err
		}
		notify()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

const queueDir = "queue"

// prepare checks n and makes the directories, readable by root only:
// anyone who could lock a slot file could hold the node's fetches.
func prepare(dir string, n int) error {
	if n <= 0 {
		return fmt.Errorf("fetchslot: %d slots: want at least 1", n)
	}
	// Its parents as other node directories are (/run/storepkg also
	// holds the fetch records), the directory itself private.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("fetchslot: slot directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, queueDir), 0o700); err != nil {
		return fmt.Errorf("fetchslot: slot directory: %w", err)
	}
	return nil
}

// tryAny locks the first free slot of n, or returns nil.
func tryAny(dir string, n int) (*Slot, error) {
	for i := range n {
		name := filepath.Join(dir, "slot-"+strconv.Itoa(i))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("fetchslot: %w", err)
		}
		err = flock(f, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &Slot{f: f, index: i}, nil
		}
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("fetchslot: locking %s: %w", name, err)
		}
	}
	return nil, nil
}

// ticket is a waiter's place in the queue.
type ticket struct {
	dir  string
	name string
	f    *os.File
}

// enqueue makes a ticket after the last one in the queue, locked.
func enqueue(dir string) (*ticket, error) {
	names, err := tickets(dir)
	if err != nil {
		return nil, err
	}
	var seq uint64
	if len(names) > 0 {
		seq, _ = ticketSeq(names[len(names)-1])
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	// Two waiters may take the same number; the rest of the name orders
	// them, and either order is fair.
	name := fmt.Sprintf("%020d-%d-%s", seq+1, os.Getpid(), hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(filepath.Join(dir, queueDir, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fetchslot: %w", err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("fetchslot: locking %s: %w", f.Name(), err)
	}
	return &ticket{dir: dir, name: name, f: f}, nil
}

// leave removes the ticket, then unlocks it, waking its successor.
func (t *ticket) leave() {
	os.Remove(t.f.Name())
	t.f.Close()
}

// predecessor is the ticket queued just before t, or "".
func (t *ticket) predecessor() (string, error) {
	names, err := tickets(t.dir)
	if err != nil {
		return "", err
	}
	i, _ := slices.BinarySearch(names, t.name)
	if i == 0 {
		return "", nil
	}
	return names[i-1], nil
}

// tickets lists the queue, oldest first.
func tickets(dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, queueDir))
	if err != nil {
		return nil, fmt.Errorf("fetchslot: %w", err)
	}
	var names []string
	for _, e := range entries {
		if _, ok := ticketSeq(e.Name()); ok {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

func ticketSeq(name string) (uint64, bool) {
	s, _, ok := strings.Cut(name, "-")
	if !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// waitGone waits until the waiter that holds the ticket file leaves the
// queue or dies (its lock goes), then removes the ticket if a dead
// waiter left it. flock cannot be interrupted, so when ctx ends first the
// wait goes on in the background and ends when that waiter moves on.
func waitGone(ctx context.Context, file string) error {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // left meanwhile
	}
	if err != nil {
		return fmt.Errorf("fetchslot: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		err := flock(f, unix.LOCK_SH)
		if err == nil {
			// Still there: its waiter died without removing it.
			if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
				done <- fmt.Errorf("fetchslot: removing the ticket of a dead waiter: %w", err)
			}
		}
		f.Close()
		close(done)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flock retries on EINTR: the Go runtime's signals interrupt a blocking
// flock.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
