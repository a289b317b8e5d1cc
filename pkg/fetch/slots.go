package fetch

import (
	"container/heap"
	"context"
	"sync"
)

// slots bounds parallel downloads and hands a freed slot to the largest
// waiting NAR first: the biggest paths are the critical path of a closure
// (decoding a 100 MB xz NAR takes over a second), so they must not start last.
type slots struct {
	mu      sync.Mutex
	free    int
	waiting waitHeap
}

type waiter struct {
	size  int64
	ready chan struct{}
	index int
}

func newSlots(n int) *slots { return &slots{free: n} }

// acquire waits for a slot; size orders the waiters.
func (s *slots) acquire(ctx context.Context, size int64) error {
	s.mu.Lock()
	if s.free > 0 && len(s.waiting) == 0 {
		s.free--
		s.mu.Unlock()
		return nil
	}
	w := &waiter{size: size, ready: make(chan struct{})}
	heap.Push(&s.waiting, w)
	s.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-w.ready:
			// Granted meanwhile: pass the slot on.
			s.releaseLocked()
		default:
			heap.Remove(&s.waiting, w.index)
		}
		return ctx.Err()
	}
}

func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked()
}

func (s *slots) releaseLocked() {
	if len(s.waiting) > 0 {
		close(heap.Pop(&s.waiting).(*waiter).ready)
		return
	}
	s.free++
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
