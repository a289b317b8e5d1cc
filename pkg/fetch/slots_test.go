package fetch

import (
	"context"
	"testing"
	"time"
)

// TestSlotsLargestFirst: a freed slot goes to the largest waiting NAR.
func TestSlotsLargestFirst(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	if err := s.acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	order := make(chan int64, 3)
	for _, size := range []int64{10, 1000, 100} {
		go func() {
			if err := s.acquire(ctx, size); err == nil {
				order <- size
				s.release()
			}
		}()
		time.Sleep(20 * time.Millisecond) // queue them in this order
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.acquire(cancelled, 1<<40); err == nil {
		t.Fatal("acquire with a cancelled context succeeded while full")
	}
	s.release()
	for _, want := range []int64{1000, 100, 10} {
		if got := <-order; got != want {
			t.Fatalf("slot went to %d, want %d", got, want)
		}
	}
}
