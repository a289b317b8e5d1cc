package fetchslot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// heldSlot keeps the helper process's slot reachable: an unreachable
// *os.File is closed by its finalizer, and the lock would go with it.
var heldSlot *Slot

// The helper process: holds a slot (or waits for one) until killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FETCHSLOT_TEST_HOLD"); dir != "" {
		var err error
		heldSlot, err = Acquire(context.Background(), dir, 1, func() { fmt.Println("waiting") })
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("held", heldSlot.Index())
		// Not select{}: with no goroutine left to run, the runtime
		// would end the process as deadlocked, and the lock with it.
		for {
			time.Sleep(time.Hour)
		}
	}
	os.Exit(m.Run())
}

// holder starts a process that acquires dir's one slot and says what it
// did first: "held 0" or "waiting".
func holder(t *testing.T, dir string) (*exec.Cmd, *bufio.Scanner, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FETCHSLOT_TEST_HOLD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatal("the holder process said nothing")
	}
	return cmd, sc, sc.Text()
}

type result struct {
	s   *Slot
	err error
}

func acquireAsync(ctx context.Context, dir string, n int) (<-chan result, <-chan struct{}) {
	res, waiting := make(chan result, 1), make(chan struct{})
	go func() {
		s, err := Acquire(ctx, dir, n, func() { close(waiting) })
		res <- result{s, err}
	}()
	return res, waiting
}

func expectWaiting(t *testing.T, what string, res <-chan result, waiting <-chan struct{}) {
	t.Helper()
	select {
	case <-waiting:
	case r := <-res:
		t.Fatalf("%s: got slot %v (%v) while the slots were taken", what, r.s, r.err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: neither waits nor has a slot", what)
	}
}

func expectSlot(t *testing.T, what string, res <-chan result) *Slot {
	t.Helper()
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r.s
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no slot", what)
	}
	return nil
}

func expectNoSlot(t *testing.T, what string, res <-chan result) {
	t.Helper()
	select {
	case r := <-res:
		t.Fatalf("%s: got slot %v (%v)", what, r.s, r.err)
	case <-time.After(3 * pollInterval):
	}
}

func queueLen(t *testing.T, dir string) int {
	t.Helper()
	names, err := tickets(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(names)
}

// TestSlotsInOrder: with two slots, a third fetch waits; freed slots go
// to the waiters in the order they came; a waiter whose context ends
// leaves the queue and takes no slot.
func TestSlotsInOrder(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a, err := Acquire(ctx, dir, 2, func() { t.Error("the first fetch waited") })
	if err != nil {
		t.Fatal(err)
	}
	b, ok, err := TryAcquire(dir, 2)
	if err != nil || !ok {
		t.Fatalf("TryAcquire with a free slot: %v, %v", ok, err)
	}
	if a.Index() == b.Index() {
		t.Fatalf("both hold slot %d", a.Index())
	}
	cRes, cWaiting := acquireAsync(ctx, dir, 2)
	expectWaiting(t, "c", cRes, cWaiting)
	cancelCtx, cancel := context.WithCancel(ctx)
	dRes, dWaiting := acquireAsync(cancelCtx, dir, 2)
	expectWaiting(t, "d", dRes, dWaiting)
	eRes, eWaiting := acquireAsync(ctx, dir, 2)
	expectWaiting(t, "e", eRes, eWaiting)
	if _, ok, _ := TryAcquire(dir, 2); ok {
		t.Fatal("TryAcquire overtook the queue")
	}

	cancel()
	if r := <-dRes; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled d: %v, %v", r.s, r.err)
	}
	if n := queueLen(t, dir); n != 2 {
		t.Errorf("%d tickets queued after d left, want 2 (c, e)", n)
	}

	a.Release()
	c := expectSlot(t, "c, after a released", cRes)
	expectNoSlot(t, "e, with c holding a's slot", eRes)
	b.Release()
	e := expectSlot(t, "e, after b released", eRes)
	c.Release()
	e.Release()
	if n := queueLen(t, dir); n != 0 {
		t.Errorf("%d tickets left", n)
	}
}

// TestSlotFreedBySIGKILL: a process holding the only slot, and one
// waiting behind it, are killed with SIGKILL; neither leaks its place.
func TestSlotFreedBySIGKILL(t *testing.T) {
	dir := t.TempDir()
	held, _, said := holder(t, dir)
	if said != "held 0" {
		t.Fatalf("holder: %q", said)
	}
	waiter, _, said := holder(t, dir)
	if said != "waiting" {
		t.Fatalf("second holder: %q", said)
	}
	res, waiting := acquireAsync(context.Background(), dir, 1)
	expectWaiting(t, "this process", res, waiting)
	if n := queueLen(t, dir); n != 2 {
		t.Fatalf("%d tickets queued, want 2", n)
	}
	waiter.Process.Kill()
	waiter.Wait()
	expectNoSlot(t, "with the holder alive", res)
	held.Process.Kill()
	held.Wait()
	s := expectSlot(t, "after both were killed", res)
	defer s.Release()
	if n := queueLen(t, dir); n != 0 {
		t.Errorf("%d tickets left after the dead waiter's", n)
	}
}

// TestSlotHandedToChild: a slot passed to a child stays held after the
// parent releases it, until the child exits.
func TestSlotHandedToChild(t *testing.T) {
	dir := t.TempDir()
	s, err := Acquire(context.Background(), dir, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "60")
	child.ExtraFiles = []*os.File{s.File()}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	s.Release()
	if _, ok, _ := TryAcquire(dir, 1); ok {
		t.Fatal("slot free while the child holds it")
	}
	child.Process.Kill()
	child.Wait()
	s2, ok, err := TryAcquire(dir, 1)
	if err != nil || !ok {
		t.Fatalf("slot not free after the child exited: %v", err)
	}
	s2.Release()
}

func TestBadBound(t *testing.T) {
	if _, err := Acquire(context.Background(), t.TempDir(), 0, nil); err == nil {
		t.Error("0 slots accepted")
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Acquire(context.Background(), file, 1, nil); err == nil {
		t.Errorf("a file as the slot directory accepted")
	} else {
		t.Log(err)
	}
}
