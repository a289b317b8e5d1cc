package store

import (
	"context"
	"fmt"
)

// Usage is what the database says the store holds.
type Usage struct {
	Paths    int64  // valid paths
	NarBytes uint64 // the sum of their NarSize (what they take unpacked, roughly)
}

// Usage counts the valid paths and their NAR sizes with one query of the
// database, without reading the store directory: cheap enough for every
// metrics scrape.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	err := retryBusy(ctx, func() error {
		var n int64
		var bytes int64
		if err := s.db.QueryRowContext(ctx, `select count(*), coalesce(sum(narSize), 0) from ValidPaths`).Scan(&n, &bytes); err != nil {
			return err
		}
		u = Usage{Paths: n, NarBytes: uint64(bytes)}
		return nil
	})
	if err != nil {
		return Usage{}, fmt.Errorf("store: counting valid paths: %w", err)
	}
	return u, nil
}
