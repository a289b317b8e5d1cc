package fetch

import (
	"container/heap"
	"context"
	"sync"
)

// slots bounds parallel downloads and hands a freed slot to the largest
// waiting NAR first: the biggest paths are the critical path of a closure
// (decoding a 100 MB xz NAR takes over a second), so they must not start last.
//
// Two more rules keep the cores busy to the end when decoding, not the
// network, is what takes the time:
//
//   - Big NARs (the caller says which are) take at most bigSlots (one per
//     core) of the slots, and while one waits, no more than bigSlots NARs
//     run at all: each big decoder has a core rather than a share of one
//     (the largest would otherwise end last, alone), and the small NARs,
//     whose cost is mostly starting a decoder, come last, several at a
//     time, filling both cores to the end.
//   - While held, no slot is granted to a NAR that queued after hold: the
//     resolver holds the slots while it looks up one level of the closure,
//     so that the NARs it finds start largest first rather than in the
//     order their lookups ended. NARs queued before still get slots.
type slots struct {
	mu         sync.Mutex
	n, free    int
	bigSlots   int
	bigFree    int
	held       bool
	gen        int // incremented by hold
	big, small waitHeap
}

// A waiter is one NAR's place in the queue, then its slot.
type waiter struct {
	size    int64
	isBig   bool
	gen     int           // slots.gen when it queued
	ready   chan struct{} // closed when the slot is granted
	granted bool
	index   int
}

func newSlots(n, bigSlots int) *slots {
	return &slots{n: n, free: n, bigSlots: bigSlots, bigFree: bigSlots}
}

// enqueue joins the queue; the slot may be granted at once.
func (s *slots) enqueue(size int64, big bool) *waiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &waiter{size: size, isBig: big, gen: s.gen, ready: make(chan struct{})}
	if big {
		heap.Push(&s.big, w)
	} else {
		heap.Push(&s.small, w)
	}
	s.dispatchLocked()
	return w
}

// wait waits until w has its slot, or ctx ends (then w leaves the queue).
func (s *slots) wait(ctx context.Context, w *waiter) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.granted {
			// Granted meanwhile: pass the slot on.
			s.releaseLocked(w)
		} else if w.isBig {
			heap.Remove(&s.big, w.index)
		} else {
			heap.Remove(&s.small, w.index)
		}
		return ctx.Err()
	}
}

// acquire waits for a slot; size orders the waiters.
func (s *slots) acquire(ctx context.Context, size int64, big bool) (*waiter, error) {
	w := s.enqueue(size, big)
	if err := s.wait(ctx, w); err != nil {
		return nil, err
	}
	return w, nil
}

func (s *slots) release(w *waiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(w)
}

func (s *slots) releaseLocked(w *waiter) {
	s.free++
	if w.isBig {
		s.bigFree++
	}
	s.dispatchLocked()
}

// dispatchLocked grants free slots to the largest waiters that may have one.
func (s *slots) dispatchLocked() {
	for s.free > 0 {
		h, i := s.nextLocked()
		if h == nil {
			return
		}
		w := heap.Remove(h, i).(*waiter)
		s.free--
		if w.isBig {
			s.bigFree--
		}
		w.granted = true
		close(w.ready)
	}
}

// nextLocked finds the largest waiter that may have a slot now: its heap
// and index, or a nil heap.
func (s *slots) nextLocked() (*waitHeap, int) {
	var best *waitHeap
	bestIndex := 0
	consider := func(h *waitHeap) {
		if !s.held {
			// Unheld, the top of the heap is the largest.
			if len(*h) > 0 && (best == nil || (*h)[0].size > (*best)[bestIndex].size) {
				best, bestIndex = h, 0
			}
			return
		}
		for i, w := range *h {
			if w.gen < s.gen && (best == nil || w.size > (*best)[bestIndex].size) {
				best, bestIndex = h, i
			}
		}
	}
	if len(s.big) == 0 || s.running() < s.bigSlots {
		consider(&s.small)
	}
	if s.bigFree > 0 {
		consider(&s.big)
	}
	return best, bestIndex
}

// running counts the granted slots.
func (s *slots) running() int { return s.n - s.free }

// hold stops granting slots to the waiters that queue from now until
// resume.
func (s *slots) hold() {
	s.mu.Lock()
	s.held = true
	s.gen++
	s.mu.Unlock()
}

func (s *slots) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = false
	s.dispatchLocked()
}

// waitHeap is a max-heap by size.
type waitHeap []*waiter

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].size > h[j].size }
func (h waitHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *waitHeap) Push(x any) {
	w := x.(*waiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waitHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}
