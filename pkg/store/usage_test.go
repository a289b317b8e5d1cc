package store

import (
	"context"
	"testing"
)

func TestUsage(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	if u, err := s.Usage(ctx); err != nil || u != (Usage{}) {
		t.Fatalf("empty store: %+v, %v", u, err)
	}
	a, b := fakePath(t, "a"), fakePath(t, "b")
	err := s.Register(ctx, []PathInfo{
		{Path: a, NarHash: [32]byte{1}, NarSize: 1000},
		{Path: b, NarHash: [32]byte{2}, NarSize: 5 << 30},
	})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := s.Usage(ctx); err != nil || u != (Usage{Paths: 2, NarBytes: 1000 + 5<<30}) {
		t.Fatalf("two paths: %+v, %v", u, err)
	}
}
