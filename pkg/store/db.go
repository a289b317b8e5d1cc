package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/storepkg/storepkg/pkg/nixbase32"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// PathInfo is a row of ValidPaths plus its references, in our terms.
// The database holds Nix's representation (see the field comments).
type PathInfo struct {
	Path storepath.Path
	// NarHash is the SHA-256 of the path's NAR serialisation. Column
	// "hash" holds it as "sha256:<lowercase base16>", as Nix writes it.
	NarHash [32]byte
	// NarSize is the NAR's length; 0 is stored as NULL ("unknown"), as
	// Nix does.
	NarSize uint64
	// References may include Path itself. Refs holds ValidPaths ids.
	References []storepath.Path
	// Deriver is the basename of the .drv, or "". Nix stores the
	// absolute path "/nix/store/<base>" in column "deriver", NULL if none.
	Deriver string
	// Sigs are stored space-separated (NULL if none), sorted and
	// de-duplicated as Nix's StringSet would write them.
	Sigs []string
	// CA is the content-address assertion; "" is stored as NULL.
	CA string
	// RegistrationTime is stored in unix seconds; zero means "now" on
	// Register, as in Nix.
	RegistrationTime time.Time
}

// notValid wraps ErrNotValid with the path.
func notValid(p storepath.Path) error {
	return fmt.Errorf("%s: %w", p.Absolute(), ErrNotValid)
}

// absJSON encodes paths as a JSON array of absolute store paths, the
// single parameter our set queries take through json_each: one statement
// serves any number of paths.
func absJSON(paths []storepath.Path) string {
	abs := make([]string, len(paths))
	for i, p := range paths {
		abs[i] = p.Absolute()
	}
	b, _ := json.Marshal(abs) // []string cannot fail to marshal
	return string(b)
}

// querier is what *sql.DB and *sql.Conn have in common.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// validIDs returns the ValidPaths ids of those of paths that are valid,
// in one statement.
func validIDs(ctx context.Context, q querier, paths []storepath.Path) (map[storepath.Path]int64, error) {
	rows, err := q.QueryContext(ctx,
		`select path, id from ValidPaths where path in (select value from json_each(?))`, absJSON(paths))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ids := make(map[storepath.Path]int64, len(paths))
	for rows.Next() {
		var abs string
		var id int64
		if err := rows.Scan(&abs, &id); err != nil {
			return nil, err
		}
		ids[storepath.Path(trimStoreDir(abs))] = id
	}
	return ids, rows.Err()
}

// ValidSubset reports for each of paths whether it is valid, with one
// query however many paths there are.
func (s *Store) ValidSubset(ctx context.Context, paths []storepath.Path) (map[storepath.Path]bool, error) {
	res := make(map[storepath.Path]bool, len(paths))
	for _, p := range paths {
		res[p] = false
	}
	if len(paths) == 0 {
		return res, nil
	}
	var ids map[storepath.Path]int64
	err := retryBusy(ctx, func() (err error) {
		ids, err = validIDs(ctx, s.db, paths)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: querying validity of %d paths: %w", len(paths), err)
	}
	for p := range ids {
		res[p] = true
	}
	return res, nil
}

// closureSQL computes, in one statement (hence one consistent snapshot),
// the roots that are not valid (kind 0) and the closure of the valid ones
// over Refs (kind 1). "union" rather than "union all" makes the recursion
// stop at paths already seen, so self-references and shared dependencies
// are visited once.
const closureSQL = `
with recursive
  roots(p) as (select value from json_each(?)),
  closure(id) as (
    select v.id from roots join ValidPaths v on v.path = roots.p
    union
    select r.reference from Refs r join closure c on r.referrer = c.id
  )
select 0, p from roots where not exists (select 1 from ValidPaths v where v.path = roots.p)
union all
select 1, v.path from closure c join ValidPaths v on v.id = c.id
order by 1, 2`

// Closure returns the sorted closure of roots: the roots and everything
// they reference, transitively. If a root is not valid it returns an
// error wrapping ErrNotValid that names it.
func (s *Store) Closure(ctx context.Context, roots []storepath.Path) ([]storepath.Path, error) {
	if len(roots) == 0 {
		return nil, nil
	}
	var out []storepath.Path
	var missing storepath.Path
	err := retryBusy(ctx, func() error {
		out, missing = nil, ""
		rows, err := s.db.QueryContext(ctx, closureSQL, absJSON(roots))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var kind int
			var abs string
			if err := rows.Scan(&kind, &abs); err != nil {
				return err
			}
			if kind == 0 {
				if missing == "" {
					missing = storepath.Path(trimStoreDir(abs))
				}
				continue
			}
			out = append(out, storepath.Path(trimStoreDir(abs)))
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: computing closure of %d paths: %w", len(roots), err)
	}
	if missing != "" {
		return nil, fmt.Errorf("store: closure: %w", notValid(missing))
	}
	return out, nil
}

// QueryPathInfo returns p's registration; the error wraps ErrNotValid if
// p is not valid. Row and references come from one statement, so they
// are consistent with each other.
func (s *Store) QueryPathInfo(ctx context.Context, p storepath.Path) (*PathInfo, error) {
	var (
		hash              string
		regTime           int64
		deriver, sigs, ca sql.NullString
		narSize           sql.NullInt64
		refsJSON          string
	)
	err := retryBusy(ctx, func() error {
		return s.db.QueryRowContext(ctx, `
select v.hash, v.registrationTime, v.deriver, v.narSize, v.sigs, v.ca,
  (select json_group_array(r.path) from Refs
     join ValidPaths r on r.id = Refs.reference where Refs.referrer = v.id)
from ValidPaths v where v.path = ?`, p.Absolute()).
			Scan(&hash, &regTime, &deriver, &narSize, &sigs, &ca, &refsJSON)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: %w", notValid(p))
	}
	if err != nil {
		return nil, fmt.Errorf("store: querying %s: %w", p.Absolute(), err)
	}
	info := &PathInfo{Path: p}
	if info.NarHash, err = parseNarHash(hash); err != nil {
		return nil, fmt.Errorf("store: %s: bad hash column %q: %w", p.Absolute(), hash, err)
	}
	info.RegistrationTime = time.Unix(regTime, 0)
	if narSize.Valid && narSize.Int64 > 0 {
		info.NarSize = uint64(narSize.Int64)
	}
	if deriver.Valid {
		info.Deriver = trimStoreDir(deriver.String)
	}
	if sigs.Valid {
		info.Sigs = strings.Fields(sigs.String)
	}
	if ca.Valid {
		info.CA = ca.String
	}
	var refs []string
	if err := json.Unmarshal([]byte(refsJSON), &refs); err != nil {
		return nil, fmt.Errorf("store: %s: decoding references: %w", p.Absolute(), err)
	}
	for _, r := range refs {
		rp, err := storepath.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("store: %s: reference: %w", p.Absolute(), err)
		}
		info.References = append(info.References, rp)
	}
	slices.Sort(info.References)
	return info, nil
}

// parseNarHash reads the hash column. Nix writes "sha256:<base16>" but
// reads any prefixed form (Hash::parseAnyPrefixed), so accept those too:
// base16, Nix base32 and SRI "sha256-<base64>".
func parseNarHash(s string) (h [32]byte, err error) {
	var b []byte
	if rest, ok := strings.CutPrefix(s, "sha256:"); ok {
		switch len(rest) {
		case hex.EncodedLen(sha256.Size):
			b, err = hex.DecodeString(rest)
		case nixbase32.EncodedLen(sha256.Size):
			b, err = nixbase32.DecodeString(rest)
		default:
			err = fmt.Errorf("wrong length %d", len(rest))
		}
	} else if rest, ok := strings.CutPrefix(s, "sha256-"); ok {
		b, err = base64.StdEncoding.DecodeString(rest)
	} else {
		err = errors.New("not a sha256 hash")
	}
	if err == nil && len(b) != sha256.Size {
		err = fmt.Errorf("decoded to %d bytes", len(b))
	}
	if err != nil {
		return h, err
	}
	copy(h[:], b)
	return h, nil
}

// Register makes infos valid in one transaction. Paths already valid are
// skipped (their rows are left as they are). The rest are inserted with
// references before referrers. Every reference must be valid already or
// be in the batch; otherwise nothing is written and the error names the
// path and the missing reference (and wraps ErrNotValid). Reference
// cycles other than self-references are refused, as Nix refuses them.
//
// Like Nix's registerValidPaths, a .drv also gets its output paths
// recorded in DerivationOutputs (read from the file, which must be in
// place), which Nix's collector uses for keep-outputs/keep-derivations.
func (s *Store) Register(ctx context.Context, infos []PathInfo) error {
	if len(infos) == 0 {
		return nil
	}
	batch := make(map[storepath.Path]*PathInfo, len(infos))
	order := make([]storepath.Path, 0, len(infos))
	lookup := make([]storepath.Path, 0, len(infos))
	seenLookup := make(map[storepath.Path]bool, len(infos))
	addLookup := func(p storepath.Path) {
		if !seenLookup[p] {
			seenLookup[p] = true
			lookup = append(lookup, p)
		}
	}
	for i := range infos {
		info := &infos[i]
		if err := checkInfo(info); err != nil {
			return err
		}
		if prev, dup := batch[info.Path]; dup {
			if prev.NarHash != info.NarHash {
				return fmt.Errorf("store: register: %s is in the batch twice with different hashes", info.Path.Absolute())
			}
			continue
		}
		batch[info.Path] = info
		order = append(order, info.Path)
		addLookup(info.Path)
		for _, r := range info.References {
			addLookup(r)
		}
	}
	return retryBusy(ctx, func() error { return s.register(ctx, batch, order, lookup) })
}

func checkInfo(info *PathInfo) error {
	if _, err := storepath.ParseBase(string(info.Path)); err != nil {
		return fmt.Errorf("store: register: %w", err)
	}
	if info.NarHash == ([32]byte{}) {
		return fmt.Errorf("store: register %s: NarHash is not set", info.Path.Absolute())
	}
	for _, r := range info.References {
		if _, err := storepath.ParseBase(string(r)); err != nil {
			return fmt.Errorf("store: register %s: reference: %w", info.Path.Absolute(), err)
		}
	}
	if info.Deriver != "" {
		if _, err := storepath.ParseBase(info.Deriver); err != nil {
			return fmt.Errorf("store: register %s: deriver: %w", info.Path.Absolute(), err)
		}
	}
	for _, sig := range info.Sigs {
		if strings.ContainsAny(sig, " \t\n") {
			return fmt.Errorf("store: register %s: signature %q contains white space", info.Path.Absolute(), sig)
		}
	}
	return nil
}

func (s *Store) register(ctx context.Context, batch map[storepath.Path]*PathInfo, order, lookup []storepath.Path) error {
	// The validity checks and the inserts happen in one write
	// transaction, so a concurrent registration of the same paths (by us
	// or by Nix) cannot slip in between.
	return s.withWriteTx(ctx, func(tx *sql.Conn) error {
		return s.registerTx(ctx, tx, batch, order, lookup)
	})
}

func (s *Store) registerTx(ctx context.Context, tx *sql.Conn, batch map[storepath.Path]*PathInfo, order, lookup []storepath.Path) error {
	ids, err := validIDs(ctx, tx, lookup)
	if err != nil {
		return fmt.Errorf("store: register: querying validity: %w", err)
	}
	var todo []storepath.Path
	pending := make(map[storepath.Path]bool)
	for _, p := range order {
		if _, ok := ids[p]; !ok {
			todo = append(todo, p)
			pending[p] = true
		}
	}
	if len(todo) == 0 {
		return nil
	}
	for _, p := range todo {
		for _, r := range batch[p].References {
			if _, ok := ids[r]; !ok && !pending[r] {
				return fmt.Errorf("store: register %s: reference %w (and not in the batch)", p.Absolute(), notValid(r))
			}
		}
	}
	sorted, err := topoSort(todo, batch)
	if err != nil {
		return err
	}

	ins, err := tx.PrepareContext(ctx, `insert into ValidPaths
  (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca)
  values (?, ?, ?, ?, ?, NULL, ?, ?)`)
	if err != nil {
		return fmt.Errorf("store: register: %w", err)
	}
	defer ins.Close()
	now := time.Now().Unix()
	type edge [2]int64
	var edges []edge
	for _, p := range sorted {
		info := batch[p]
		regTime := now
		if !info.RegistrationTime.IsZero() {
			regTime = info.RegistrationTime.Unix()
		}
		res, err := ins.ExecContext(ctx, p.Absolute(), "sha256:"+hex.EncodeToString(info.NarHash[:]), regTime,
			nullIf(info.Deriver != "", storepath.StoreDir+"/"+info.Deriver),
			nullIf(info.NarSize != 0, int64(info.NarSize)),
			nullIf(len(info.Sigs) != 0, joinSigs(info.Sigs)),
			nullIf(info.CA != "", info.CA))
		if err != nil {
			return fmt.Errorf("store: register %s: %w", p.Absolute(), err)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("store: register %s: %w", p.Absolute(), err)
		}
		ids[p] = id
		if strings.HasSuffix(p.Name(), ".drv") {
			if err := s.addDerivationOutputs(ctx, tx, p, id); err != nil {
				return err
			}
		}
	}
	for _, p := range sorted {
		for _, r := range batch[p].References {
			edges = append(edges, edge{ids[p], ids[r]})
		}
	}
	if len(edges) > 0 {
		b, _ := json.Marshal(edges)
		// One statement for all references; "insert or replace" as Nix's
		// AddReference, so duplicate references are harmless.
		if _, err := tx.ExecContext(ctx, `insert or replace into Refs (referrer, reference)
  select value ->> 0, value ->> 1 from json_each(?)`, string(b)); err != nil {
			return fmt.Errorf("store: register: adding %d references: %w", len(edges), err)
		}
	}
	return nil
}

func nullIf(ok bool, v any) any {
	if !ok {
		return nil
	}
	return v
}

func joinSigs(sigs []string) string {
	s := slices.Clone(sigs)
	slices.Sort(s)
	s = slices.Compact(s)
	if len(s) > 0 && s[0] == "" {
		s = s[1:]
	}
	return strings.Join(s, " ")
}

// topoSort orders todo so that each path comes after the paths of todo it
// references. Self-references are not edges; any other cycle is an error
// (Nix rolls back registerValidPaths on one).
func topoSort(todo []storepath.Path, batch map[storepath.Path]*PathInfo) ([]storepath.Path, error) {
	const (
		unseen = iota
		active
		done
	)
	state := make(map[storepath.Path]int, len(todo))
	inTodo := make(map[storepath.Path]bool, len(todo))
	for _, p := range todo {
		inTodo[p] = true
	}
	out := make([]storepath.Path, 0, len(todo))
	// Iterative depth-first search: long reference chains must not
	// exhaust anything.
	type frame struct {
		p    storepath.Path
		next int
	}
	for _, start := range todo {
		if state[start] != unseen {
			continue
		}
		stack := []frame{{p: start}}
		state[start] = active
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			refs := batch[top.p].References
			if top.next < len(refs) {
				r := refs[top.next]
				top.next++
				if r == top.p || !inTodo[r] {
					continue
				}
				switch state[r] {
				case active:
					return nil, fmt.Errorf("store: register: reference cycle: %s refers to %s, which refers back to it", top.p.Absolute(), r.Absolute())
				case unseen:
					state[r] = active
					stack = append(stack, frame{p: r})
				}
				continue
			}
			state[top.p] = done
			out = append(out, top.p)
			stack = stack[:len(stack)-1]
		}
	}
	return out, nil
}
