package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// GCOptions configure CollectGarbage. The zero value collects everything
// that is garbage, as `nix-store --gc` does with Nix's default settings.
type GCOptions struct {
	// DryRun computes what a collection would delete and reports it in
	// the result without deleting anything. (Nix's --print-dead does
	// delete a few things: stale temporary-roots files, stale indirect
	// roots and store entries whose names are not store paths. A dry run
	// here leaves them, and only reports the last. Indirect roots are
	// never removed here, dry run or not.)
	DryRun bool
	// MaxFreed stops the collection once at least this many bytes have
	// been freed; 0 means no limit. Bytes are counted as Nix's deletePath
	// counts them: the st_size of every non-directory removed whose link
	// count is 1 or 2, i.e. apparent file sizes on disk, not NarSize and
	// not allocated blocks. With DryRun the limit is simulated.
	MaxFreed uint64
	// MinAge keeps every valid path registered less than MinAge ago,
	// together with its closure: such paths count as roots. Registration
	// times are whole seconds, so paths up to a second older may stay too.
	// (Not a Nix option: Nix's collector has no age limit.)
	MinAge time.Duration
	// KeepOutputs is Nix's keep-outputs setting (default false): the
	// valid outputs of a live derivation are live.
	KeepOutputs bool
	// NoKeepDerivations turns off Nix's keep-derivations setting (on by
	// default): a live path keeps its deriver when that deriver is a
	// valid derivation (a name ending in ".drv") whose outputs, as
	// recorded in DerivationOutputs from the .drv file itself, include
	// the path, as Nix 2.8's collector visits a derivation's outputs. The
	// Deriver field alone keeps nothing: it is not covered by a
	// narinfo's signature, so a cache could name any valid path in it.
	NoKeepDerivations bool
	// Log receives progress messages; nil means logrus's standard logger.
	Log *logrus.Entry
}

// GCResult reports a collection.
type GCResult struct {
	// Dead names what was deleted (with DryRun: what would be), in
	// deletion order, as logical paths /nix/store/<name> the way
	// `nix-store --gc --print-dead` prints them: valid store paths
	// (referrers before their references) and leftovers.
	Dead []string
	// Valid counts the valid store paths among Dead: they were
	// unregistered from the database, then deleted.
	Valid int
	// Leftovers counts the rest of Dead: unregistered trees, temporary
	// unpack directories, lock files and names that are not store paths.
	Leftovers int
	// BytesFreed is what the deletions freed (or would free), counted
	// as described at GCOptions.MaxFreed.
	BytesFreed uint64
	// Roots counts the valid paths that were roots of any kind
	// (permanent, runtime, temporary, young); Live the valid paths kept
	// as their closure.
	Roots, Live int
	// KeptLate counts dead paths that were spared because, while the
	// collection ran, they became temporary roots (through the GC
	// socket), gained a referrer, became valid, or were locked.
	KeptLate int
	// UnusedLinks counts the files removed from /nix/store/.links
	// because no store file shares them any more.
	UnusedLinks int
	// Unresolved lists the possible roots that could not be read or
	// followed (see ErrUnresolvedRoots); when there are any, every valid
	// path was kept.
	Unresolved []UnresolvedRoot
}

// ErrUnresolvedRoots is wrapped by the error of a collection that found
// roots it could not resolve (GCResult.Unresolved): an indirect root
// whose target cannot be looked up (a directory that cannot be read, a
// loop of links, a top-level directory not visible under the store's
// root), or a directory of roots that cannot be read. Such a root may
// keep any path, so the collection keeps every valid path; it still
// deletes what no root can keep (entries that are not valid paths and
// not temporary roots), and its result says what it did.
var ErrUnresolvedRoots = errors.New("GC roots that cannot be resolved keep every valid path")

// testHookGC, when set by tests, is called at points of a collection:
// "roots" once every root has been read (where Nix's _NIX_TEST_GC_SYNC
// pauses), "plan" once the dead entries are known, and "delete" with the
// entry's name just before an entry's files are removed (after it was
// unregistered, while it is the collector's pending path).
var testHookGC func(stage, name string)

func gcHook(stage, name string) {
	if testHookGC != nil {
		testHookGC(stage, name)
	}
}

// CollectGarbage deletes the paths that no root keeps alive, the way Nix
// 2.8's LocalStore::collectGarbage does, so that it can run next to Nix
// and next to Nix's and our own installers:
//
//   - It holds gc.lock exclusively for the whole run, and meanwhile serves
//     the socket gc-socket/socket: processes that add temporary roots
//     during the collection send them there (AddTempRoots does).
//   - Roots are the symlinks (and store-path-named files) under gcroots/
//     and profiles/, indirect roots (links to links into the store,
//     looked up with the store's root as "/", never removed; see
//     findRoots), runtime roots found in /proc, the temporary roots of live
//     processes (temproots/<pid>) and those received on the socket, and
//     with MinAge the recently registered paths. A temporary root
//     protects every entry with its hash part (the path, its ".lock"
//     file, its temporary unpack directory).
//   - Live is the closure of the valid roots over references (plus
//     derivers, keep-derivations, and outputs, keep-outputs; see
//     GCOptions for which derivers count). Every
//     other valid path that the store directory leads to is dead, and so
//     is every other entry of the store directory.
//   - Dead paths are deleted referrers first. Each is checked again just
//     before: a path that has meanwhile become a temporary root, or
//     that still has a valid referrer, is kept; otherwise it becomes the
//     collector's pending path (a socket client adding it as a root
//     waits until its deletion is over), is unregistered in one
//     transaction and then its files are removed.
//   - A possible root that cannot be resolved makes every valid path
//     live; the collection then returns ErrUnresolvedRoots.
//
// On error the result describes what was done until then.
func (s *Store) CollectGarbage(ctx context.Context, opts GCOptions) (*GCResult, error) {
	c := &collector{s: s, opts: opts, log: opts.Log, res: &GCResult{}, roots: map[string]bool{}}
	if c.log == nil {
		c.log = logrus.NewEntry(logrus.StandardLogger())
	}
	err := c.run(ctx)
	return c.res, err
}

type collector struct {
	s    *Store
	opts GCOptions
	log  *logrus.Entry
	res  *GCResult
	srv  *gcServer

	// roots holds the base names of the permanent, runtime and
	// temporary roots read from files; only those that are valid count.
	roots map[string]bool
}

// gcItem is one entry of the deletion plan.
type gcItem struct {
	name  string // base name in the store directory
	node  int    // graph node if the path was valid, else -1
	other bool   // not a store path name at all
}

func (c *collector) run(ctx context.Context) error {
	s := c.s
	if !c.opts.DryRun {
		// Nix deletes its reserved space first, so there is room to work.
		reserved := filepath.Join(s.stateDir, "db", "reserved")
		if err := os.Remove(reserved); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: gc: removing %s: %w", reserved, err)
		}
	}

	// The global GC lock: while we hold it exclusively, no process adds
	// temporary roots to its file; they come to our socket instead.
	lock, err := storefs.OpenLockFile(filepath.Join(s.stateDir, "gc.lock"))
	if err != nil {
		return fmt.Errorf("store: gc: %w", err)
	}
	defer lock.Close()
	ok, err := storefs.TryLock(lock, storefs.Exclusive)
	if err != nil {
		return fmt.Errorf("store: gc: %w", err)
	}
	if !ok {
		c.log.Info("waiting for the big garbage collector lock...")
		if err := storefs.WaitLock(ctx, lock, storefs.Exclusive); err != nil {
			return fmt.Errorf("store: gc: locking %s: %w", lock.Name(), err)
		}
	}

	c.log.Debugf("acquired %s", lock.Name())
	c.srv, err = startGCServer(s.stateDir, c.log)
	if err != nil {
		return err
	}
	defer func() {
		c.srv.stop()
		c.srv.awaitClients(clientAppendTimeout)
	}()

	// Roots. The permanent ones cannot increase while we hold the lock
	// (adding one adds a temporary root first); temporary roots added
	// from now on arrive on the socket.
	if err := c.findRoots(filepath.Join(s.stateDir, "gcroots"), typeUnknown); err != nil {
		return err
	}
	if err := c.findRoots(filepath.Join(s.stateDir, "profiles"), typeUnknown); err != nil {
		return err
	}
	if err := c.findRuntimeRoots(); err != nil {
		return err
	}
	if err := c.readTempRoots(); err != nil {
		return err
	}
	c.log.Debugf("found %d roots and %d temporary roots", len(c.roots), len(c.srv.tempRootHashes()))
	gcHook("roots", "")

	g, err := c.loadGraph(ctx)
	if err != nil {
		return err
	}
	live := c.liveSet(g)
	plan, err := c.plan(g, live)
	if err != nil {
		return err
	}
	c.log.Debugf("%d valid paths, %d live, %d entries to delete", len(g.names), c.res.Live, len(plan))
	gcHook("plan", "")

	if c.opts.DryRun {
		return errors.Join(c.simulate(plan), c.unresolvedErr())
	}
	if err := c.execute(ctx, plan); err != nil {
		return errors.Join(err, c.unresolvedErr())
	}
	n, err := removeUnusedLinks(filepath.Join(s.storeDir, ".links"))
	c.res.UnusedLinks = n
	return errors.Join(err, c.unresolvedErr())
}

// unresolvedErr reports the roots that could not be resolved, if any.
func (c *collector) unresolvedErr() error {
	u := c.res.Unresolved
	if len(u) == 0 {
		return nil
	}
	const show = 3
	var b strings.Builder
	for i, r := range u[:min(len(u), show)] {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.String())
	}
	if len(u) > show {
		fmt.Fprintf(&b, "; and %d more", len(u)-show)
	}
	return fmt.Errorf("store: gc: %w (%d found, no valid path deleted): %s", ErrUnresolvedRoots, len(u), b.String())
}

// clientAppendTimeout bounds how long a collection, before it releases
// gc.lock, waits for clients to record the roots it acknowledged (see
// gcServer.awaitClients).
const clientAppendTimeout = 2 * time.Second

// gcGraph is a snapshot of the database: valid paths and the edges that
// keep paths alive (forward: from a live path to what it keeps).
type gcGraph struct {
	names   []string       // node -> base name
	regTime []int64        // node -> registrationTime
	idx     map[string]int // base name -> node
	refs    [][]int        // references, self-references left out
	keeps   [][]int        // refs plus deriver/output edges
	keptBy  [][]int        // the reverse of keeps
}

// loadGraph reads ValidPaths, Refs (and for the keep-* settings the
// derivers and DerivationOutputs) in one read transaction, so the
// snapshot is consistent.
func (c *collector) loadGraph(ctx context.Context) (*gcGraph, error) {
	var g *gcGraph
	err := retryBusy(ctx, func() error {
		var err error
		g, err = c.readGraph(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: gc: reading the database: %w", err)
	}
	return g, nil
}

func (c *collector) readGraph(ctx context.Context) (*gcGraph, error) {
	conn, err := c.s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "begin"); err != nil {
		return nil, err
	}
	committed := false
	defer func() {
		if !committed {
			rollback(conn)
		}
	}()

	g := &gcGraph{idx: map[string]int{}}
	byID := map[int64]int{}
	derivers := map[int]string{} // node -> base name of its Deriver
	rows, err := conn.QueryContext(ctx, `select id, path, registrationTime, deriver from ValidPaths`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var id, reg int64
		var path string
		var deriver sql.NullString
		if err := rows.Scan(&id, &path, &reg, &deriver); err != nil {
			rows.Close()
			return nil, err
		}
		n := len(g.names)
		name := trimStoreDir(path)
		g.names = append(g.names, name)
		g.regTime = append(g.regTime, reg)
		g.idx[name] = n
		byID[id] = n
		if deriver.Valid && deriver.String != "" {
			derivers[n] = trimStoreDir(deriver.String)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	g.refs = make([][]int, len(g.names))
	g.keeps = make([][]int, len(g.names))
	g.keptBy = make([][]int, len(g.names))
	edge := func(from, to int) {
		g.keeps[from] = append(g.keeps[from], to)
		g.keptBy[to] = append(g.keptBy[to], from)
	}

	rows, err = conn.QueryContext(ctx, `select referrer, reference from Refs`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var a, b int64
		if err := rows.Scan(&a, &b); err != nil {
			rows.Close()
			return nil, err
		}
		from, ok1 := byID[a]
		to, ok2 := byID[b]
		if !ok1 || !ok2 || from == to {
			continue
		}
		g.refs[from] = append(g.refs[from], to)
		edge(from, to)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}

	// The derivation edges come from DerivationOutputs, which Register
	// fills from the .drv files themselves, as Nix 2.8's collector
	// (deleteReferrersClosure) follows them:
	//   - keep-derivations: a live output keeps a valid derivation that
	//     lists it as an output, if the output's Deriver names that
	//     derivation too (the collector visits the outputs of a .drv
	//     whose deriver it is). A Deriver naming anything else, a path
	//     that is not a .drv or a .drv that does not list the output,
	//     keeps nothing: the field is unsigned. (Nix 2.8 also adds a live
	//     path's valid deriver, any deriver, to the closure it marks
	//     alive when it finds a root; whether that happens before the
	//     deriver is examined depends on the order of readdir, so Nix
	//     keeps such a deriver only sometimes. We never keep it.)
	//   - keep-outputs: a live derivation keeps its valid outputs (the
	//     collector visits queryValidDerivers).
	if !c.opts.NoKeepDerivations || c.opts.KeepOutputs {
		rows, err = conn.QueryContext(ctx, `select drv, path from DerivationOutputs`)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var drv int64
			var out string
			if err := rows.Scan(&drv, &out); err != nil {
				rows.Close()
				return nil, err
			}
			d, ok1 := byID[drv]
			o, ok2 := g.idx[trimStoreDir(out)]
			if !ok1 || !ok2 || d == o || !strings.HasSuffix(g.names[d], ".drv") {
				continue
			}
			if !c.opts.NoKeepDerivations && derivers[o] == g.names[d] {
				edge(o, d)
			}
			if c.opts.KeepOutputs {
				edge(d, o)
			}
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
	}
	if _, err := conn.ExecContext(ctx, "commit"); err != nil {
		return nil, err
	}
	committed = true
	return g, nil
}

// liveSet marks the roots that are valid and their closure; every valid
// path if a root could not be resolved.
func (c *collector) liveSet(g *gcGraph) []bool {
	hashes := c.srv.tempRootHashes()
	var cutoff int64
	young := c.opts.MinAge > 0
	if young {
		cutoff = time.Now().Add(-c.opts.MinAge).Unix()
	}
	live := make([]bool, len(g.names))
	var stack []int
	for n, name := range g.names {
		// Registration times are whole seconds: a path registered in the
		// cutoff's second may be younger than MinAge, so it stays.
		isRoot := c.roots[name] || (len(name) >= storepath.HashLen && hashes[name[:storepath.HashLen]]) ||
			(young && g.regTime[n] >= cutoff)
		if isRoot {
			c.res.Roots++
			live[n] = true
			stack = append(stack, n)
		}
	}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, m := range g.keeps[n] {
			if !live[m] {
				live[m] = true
				stack = append(stack, m)
			}
		}
	}
	if len(c.res.Unresolved) > 0 {
		for n := range live {
			live[n] = true
		}
	}
	for _, l := range live {
		if l {
			c.res.Live++
		}
	}
	return live
}

// plan walks the store directory as Nix does: a name that is not a
// store path is garbage; an invalid store path is garbage unless its hash
// part is a temporary root; a dead valid path is deleted together with
// everything dead that (transitively) keeps it, referrers first.
func (c *collector) plan(g *gcGraph, live []bool) ([]gcItem, error) {
	entries, err := os.ReadDir(c.s.storeDir)
	if err != nil {
		return nil, fmt.Errorf("store: gc: reading %s: %w", c.s.storeDir, err)
	}
	hashes := c.srv.tempRootHashes()
	planned := make([]bool, len(g.names))
	var plan []gcItem
	for _, e := range entries {
		name := e.Name()
		if name == ".links" {
			continue
		}
		hash, ok := storepath.ParseEntryName(name)
		if !ok {
			plan = append(plan, gcItem{name: name, node: -1, other: true})
			continue
		}
		n, valid := g.idx[name]
		if !valid {
			if !hashes[hash] {
				plan = append(plan, gcItem{name: name, node: -1})
			}
			continue
		}
		if live[n] || planned[n] {
			continue
		}
		// What keeps n, transitively; all dead, or n would be live.
		group := []int{n}
		planned[n] = true
		for i := 0; i < len(group); i++ {
			for _, m := range g.keptBy[group[i]] {
				if !planned[m] && !live[m] {
					planned[m] = true
					group = append(group, m)
				}
			}
		}
		for _, m := range topoReferrersFirst(g, group) {
			plan = append(plan, gcItem{name: g.names[m], node: m})
		}
	}
	return plan, nil
}

// topoReferrersFirst orders group so that every path comes before the
// paths of group it references (Nix's topoSortPaths).
func topoReferrersFirst(g *gcGraph, group []int) []int {
	in := make(map[int]bool, len(group))
	for _, n := range group {
		in[n] = true
	}
	done := make(map[int]bool, len(group))
	post := make([]int, 0, len(group))
	type frame struct{ n, next int }
	for _, start := range group {
		if done[start] {
			continue
		}
		done[start] = true
		stack := []frame{{n: start}}
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			if top.next < len(g.refs[top.n]) {
				m := g.refs[top.n][top.next]
				top.next++
				if in[m] && !done[m] {
					done[m] = true
					stack = append(stack, frame{n: m})
				}
				continue
			}
			post = append(post, top.n)
			stack = stack[:len(stack)-1]
		}
	}
	slices.Reverse(post)
	return post
}

// simulate fills the result of a dry run.
func (c *collector) simulate(plan []gcItem) error {
	for _, it := range plan {
		if c.opts.MaxFreed > 0 && c.res.BytesFreed >= c.opts.MaxFreed {
			break
		}
		n, err := storefs.TreeSize(filepath.Join(c.s.storeDir, it.name), freedBy)
		if err != nil {
			return fmt.Errorf("store: gc: %w", err)
		}
		c.res.BytesFreed += n
		c.record(it)
	}
	return nil
}

func (c *collector) record(it gcItem) {
	c.res.Dead = append(c.res.Dead, storepath.StoreDir+"/"+it.name)
	if it.node >= 0 {
		c.res.Valid++
	} else {
		c.res.Leftovers++
	}
}

// execute deletes the plan's entries in order. Failing to remove files
// does not stop it (the entry is then an invalid leftover the next run
// removes); failing to update the database does.
func (c *collector) execute(ctx context.Context, plan []gcItem) error {
	var errs []error
	for _, it := range plan {
		if c.opts.MaxFreed > 0 && c.res.BytesFreed >= c.opts.MaxFreed {
			c.log.Infof("deleted at least %d bytes; stopping", c.opts.MaxFreed)
			break
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("store: gc: %w", err))
			break
		}
		deleted, err := c.deleteItem(ctx, it)
		if deleted {
			c.record(it)
		}
		if err != nil {
			errs = append(errs, err)
			var fatal *gcFatal
			if errors.As(err, &fatal) {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// gcFatal marks errors after which the collection must stop.
type gcFatal struct{ err error }

func (e *gcFatal) Error() string { return e.err.Error() }
func (e *gcFatal) Unwrap() error { return e.err }

// deleteItem deletes one entry unless it has come alive meanwhile.
func (c *collector) deleteItem(ctx context.Context, it gcItem) (deleted bool, err error) {
	real := filepath.Join(c.s.storeDir, it.name)
	abs := storepath.StoreDir + "/" + it.name
	if it.other {
		// Nix deletes names that are not store paths straight away.
		c.log.Debugf("deleting '%s'", abs)
		gcHook("delete", it.name)
		freed, err := storefs.RemoveTree(real, freedBy)
		c.res.BytesFreed += freed
		if err != nil {
			return false, fmt.Errorf("store: gc: deleting %s: %w", real, err)
		}
		return true, nil
	}

	hash := it.name[:storepath.HashLen]
	if !c.srv.claim(hash) {
		c.log.Debugf("not deleting '%s': it became a temporary root", abs)
		c.res.KeptLate++
		return false, nil
	}
	defer c.srv.release()

	if it.node >= 0 {
		referrer, err := c.invalidate(ctx, abs)
		if err != nil {
			return false, &gcFatal{fmt.Errorf("store: gc: unregistering %s: %w", abs, err)}
		}
		if referrer != "" {
			c.log.Debugf("not deleting '%s': it is in use by '%s'", abs, referrer)
			c.res.KeptLate++
			return false, nil
		}
	} else {
		// An installer registers a path only after making it a temporary
		// root, so this is belt and braces: never delete what is valid.
		valid, err := c.isValid(ctx, abs)
		if err != nil {
			return false, &gcFatal{fmt.Errorf("store: gc: %w", err)}
		}
		if valid {
			c.log.Debugf("not deleting '%s': it became valid", abs)
			c.res.KeptLate++
			return false, nil
		}
	}

	c.log.Debugf("deleting '%s'", abs)
	gcHook("delete", it.name)
	var freed uint64
	if strings.HasSuffix(it.name, ".lock") {
		var held bool
		freed, held, err = deleteLockFile(real)
		if held {
			c.log.Debugf("not deleting '%s': it is locked", abs)
			c.res.KeptLate++
			return false, nil
		}
	} else {
		freed, err = storefs.RemoveTree(real, freedBy)
	}
	c.res.BytesFreed += freed
	if err != nil {
		return it.node >= 0, fmt.Errorf("store: gc: deleting %s: %w", real, err)
	}
	return true, nil
}

// invalidate unregisters abs in one write transaction unless a valid path
// other than itself still references it (then it returns that referrer
// and changes nothing), as Nix's invalidatePathChecked. References of abs
// go with its row (ON DELETE CASCADE), as do DerivationOutputs rows.
func (c *collector) invalidate(ctx context.Context, abs string) (referrer string, err error) {
	err = retryBusy(ctx, func() error {
		referrer = ""
		return c.s.withWriteTx(ctx, func(tx *sql.Conn) error {
			var id int64
			err := tx.QueryRowContext(ctx, `select id from ValidPaths where path = ?`, abs).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			if err != nil {
				return err
			}
			err = tx.QueryRowContext(ctx, `select v.path from Refs r join ValidPaths v on v.id = r.referrer
  where r.reference = ? and r.referrer != ? limit 1`, id, id).Scan(&referrer)
			if err == nil {
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			_, err = tx.ExecContext(ctx, `delete from ValidPaths where id = ?`, id)
			return err
		})
	})
	return referrer, err
}

func (c *collector) isValid(ctx context.Context, abs string) (bool, error) {
	var n int
	err := retryBusy(ctx, func() error {
		return c.s.db.QueryRowContext(ctx, `select count(*) from ValidPaths where path = ?`, abs).Scan(&n)
	})
	if err != nil {
		return false, fmt.Errorf("querying validity of %s: %w", abs, err)
	}
	return n > 0, nil
}

// parseNixStorePath is Nix's maybeParseStorePath for an absolute path:
// canonicalised, directly in /nix/store, with a store path name. It
// returns the base name and hash part.
func parseNixStorePath(p string) (base, hash string, ok bool) {
	if !strings.HasPrefix(p, "/") {
		return "", "", false
	}
	p = filepath.Clean(p)
	if filepath.Dir(p) != storepath.StoreDir {
		return "", "", false
	}
	base = filepath.Base(p)
	hash, ok = storepath.ParseEntryName(base)
	return base, hash, ok
}

// isInStore is Nix's isInStore: p is below /nix/store (not the
// directory itself). The text is not canonicalised.
func isInStore(p string) bool {
	return isInDir(p, storepath.StoreDir)
}

// isInDir is Nix's isInDir.
func isInDir(p, dir string) bool {
	return strings.HasPrefix(p, "/") && strings.HasPrefix(p, dir) && len(p) >= len(dir)+2 && p[len(dir)] == '/'
}

// toStoreBase is Nix's toStorePath for a path in the store: the base
// name of the store path p is in, if that is a store path.
func toStoreBase(p string) (string, bool) {
	if !isInStore(p) {
		return "", false
	}
	prefix := p
	if i := strings.IndexByte(p[len(storepath.StoreDir)+1:], '/'); i >= 0 {
		prefix = p[:len(storepath.StoreDir)+1+i]
	}
	base, _, ok := parseNixStorePath(prefix)
	if !ok {
		return "", false
	}
	return base, true
}
