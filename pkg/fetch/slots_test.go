package fetch

import (
	"context"
	"testing"
	"time"
)

// TestSlotsLargestFirst: a freed slot goes to the largest waiting NAR.
func TestSlotsLargestFirst(t *testing.T) {
	s := newSlots(1, 1)
	ctx := context.Background()
	first, err := s.acquire(ctx, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan int64, 3)
	for _, size := range []int64{10, 1000, 100} {
		go func() {
			if w, err := s.acquire(ctx, size, false); err == nil {
				order <- size
				s.release(w)
			}
		}()
		time.Sleep(20 * time.Millisecond) // queue them in this order
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.acquire(cancelled, 1<<40, false); err == nil {
		t.Fatal("acquire with a cancelled context succeeded while full")
	}
	s.release(first)
	for _, want := range []int64{1000, 100, 10} {
		if got := <-order; got != want {
			t.Fatalf("slot went to %d, want %d", got, want)
		}
	}
}

// granted reports which of ws have their slot.
func granted(ws ...*waiter) []bool {
	var g []bool
	for _, w := range ws {
		select {
		case <-w.ready:
			g = append(g, true)
		default:
			g = append(g, false)
		}
	}
	return g
}

func same(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSlotsBig: big NARs take at most their share of the slots, and while
// one waits no more NARs than that share run; then the small ones take
// every free slot.
func TestSlotsBig(t *testing.T) {
	s := newSlots(4, 2)
	b1 := s.enqueue(100, true)
	b2 := s.enqueue(90, true)
	b3 := s.enqueue(80, true)
	s1 := s.enqueue(5, false)
	s2 := s.enqueue(7, false)
	if g := granted(b1, b2, b3, s1, s2); !same(g, []bool{true, true, false, false, false}) {
		t.Fatalf("granted %v", g)
	}
	s.release(b1)
	if g := granted(b3, s1, s2); !same(g, []bool{true, true, true}) {
		t.Fatalf("after a big release: granted %v", g)
	}
	s4 := s.enqueue(1000, false)
	s.release(s1)
	if g := granted(s4); !same(g, []bool{true}) {
		t.Fatalf("after a small release: granted %v", g)
	}
}

// TestSlotsHold: while held, the NARs that queue wait and then start
// largest first; those queued before the hold still get freed slots.
func TestSlotsHold(t *testing.T) {
	s := newSlots(1, 1)
	first := s.enqueue(1, false)
	old := s.enqueue(2, false)
	s.hold()
	small := s.enqueue(10, false)
	large := s.enqueue(1000, false)
	s.release(first)
	if g := granted(old, small, large); !same(g, []bool{true, false, false}) {
		t.Fatalf("held: granted %v", g)
	}
	s.release(old)
	if g := granted(small, large); !same(g, []bool{false, false}) {
		t.Fatalf("held, slot free: granted %v", g)
	}
	s.resume()
	if g := granted(small, large); !same(g, []bool{false, true}) {
		t.Fatalf("resumed: granted %v", g)
	}
	// A cancelled waiter leaves the queue.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.wait(ctx, small); err == nil {
		t.Fatal("wait with a cancelled context succeeded while full")
	}
	s.release(large)
	if s.free != 1 || len(s.small) != 0 {
		t.Fatalf("free %d, waiting %d", s.free, len(s.small))
	}
}
