package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// hashPartsSQL looks each hash part up as Nix's queryPathFromHashPart
// does, as a range of the path index: "<store>/<hash>-…" sorts between
// "<store>/<hash>" and "<store>/<hash>." ('-' < '.'), so each lookup is
// one index seek, however large the store.
const hashPartsSQL = `
select h.value, v.path from json_each(?) h
join ValidPaths v on v.path > ? || h.value and v.path < ? || h.value || '.'`

// ValidPathsByHashPart returns the valid path of each of hashes (32-char
// hash parts) that has one, with one query however many there are.
// Hashes that are not well-formed find nothing.
func (s *Store) ValidPathsByHashPart(ctx context.Context, hashes []string) (map[string]storepath.Path, error) {
	res := make(map[string]storepath.Path, len(hashes))
	if len(hashes) == 0 {
		return res, nil
	}
	arg, _ := json.Marshal(hashes) // []string cannot fail to marshal
	err := retryBusy(ctx, func() error {
		clear(res)
		rows, err := s.db.QueryContext(ctx, hashPartsSQL, string(arg), storeDirPrefix, storeDirPrefix)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var h, abs string
			if err := rows.Scan(&h, &abs); err != nil {
				return err
			}
			p, err := storepath.Parse(abs)
			if err != nil || p.HashPart() != h {
				continue // not a path of this hash (a malformed row)
			}
			res[h] = p
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: looking up %d hash parts: %w", len(hashes), err)
	}
	return res, nil
}
