// Package store manages a node's Nix store: the tree <root>/nix/store and
// Nix's own SQLite database <root>/nix/var/nix/db/db.sqlite (schema 10, as
// written by Nix 2.8). Everything here follows Nix's on-disk formats and
// locking protocols exactly, so real Nix (nix-store --verify, -qR, --gc)
// can run against the same store at the same time and agrees with us.
//
// Installing a path safely next to a running Nix garbage collector takes
// the same steps Nix's own LocalStore::addToStore takes:
//
//	AddTempRoots(p)          // the GC now keeps p (and anything named <hash of p>-…)
//	LockPath(p)              // one installer per path, across processes
//	ValidSubset(p)           // someone else may have finished it meanwhile
//	PrepareInstall(p) -> tmp // remove leftovers of a killed attempt
//	… unpack into tmp …
//	CommitInstall(tmp, p)    // atomic rename
//	Sync()                   // data and renames durable before they are valid
//	Register(…)              // once the references are valid too
//	Unlock()
//	AddGCRoot(name, p)       // before Close drops the temporary roots
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// SchemaVersion is the Nix database schema this package reads and writes
// (Nix 2.x's nixSchemaVersion).
const SchemaVersion = 10

// ErrNotValid is wrapped by errors about store paths that are not
// registered as valid in the database.
var ErrNotValid = errors.New("not valid in store")

// ErrSchema is wrapped when the database has a schema other than
// SchemaVersion: upgrading or downgrading is Nix's job, not ours.
var ErrSchema = errors.New("unsupported Nix database schema")

// busyTimeoutMillis bounds one SQLite wait for a lock held by another
// connection (real Nix included). Waits longer than that are retried by
// retryBusy until the caller's context ends, so a short value keeps
// cancellation prompt without ever failing on contention.
const busyTimeoutMillis = 1000

// Store is a Nix store under a root directory. It is safe for concurrent
// use by multiple goroutines.
type Store struct {
	root     string // absolute, cleaned
	storeDir string // <root>/nix/store
	stateDir string // <root>/nix/var/nix
	db       *sql.DB
	bigLock  *os.File
	roots    *tempRoots

	closeOnce sync.Once
	closeErr  error
}

// Open opens the store under root ("/" in production, any directory in
// tests), creating the directories and the database as Nix would if they
// are missing. Like Nix's LocalStore it holds a shared lock on
// db/big-lock until Close, so no schema upgrade can run under it.
func Open(ctx context.Context, root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store: resolving root %q: %w", root, err)
	}
	s := &Store{
		root:     abs,
		storeDir: filepath.Join(abs, "nix", "store"),
		stateDir: filepath.Join(abs, "nix", "var", "nix"),
	}
	if err := s.createDirs(); err != nil {
		return nil, err
	}
	dbDir := filepath.Join(s.stateDir, "db")

	// Same order as Nix: big lock first, then look at the schema, so we
	// never read a schema file a concurrent upgrade is rewriting.
	s.bigLock, err = storefs.OpenLockFile(filepath.Join(dbDir, "big-lock"))
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := storefs.WaitLock(ctx, s.bigLock, storefs.Shared); err != nil {
		s.bigLock.Close()
		return nil, fmt.Errorf("store: locking %s: %w", s.bigLock.Name(), err)
	}
	if err := s.openDB(ctx, dbDir); err != nil {
		s.bigLock.Close()
		return nil, err
	}
	s.roots = acquireTempRoots(s.stateDir)
	return s, nil
}

// createDirs makes the directories Nix's LocalStore constructor makes, so
// that a store we created looks like one Nix created.
func (s *Store) createDirs() error {
	dirs := []string{
		s.storeDir,
		filepath.Join(s.storeDir, ".links"), // nix-store --verify --check-contents reads it
		filepath.Join(s.stateDir, "profiles"),
		filepath.Join(s.stateDir, "temproots"),
		filepath.Join(s.stateDir, "db"),
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("store: creating %s: %w", d, err)
		}
	}
	gcroots := filepath.Join(s.stateDir, "gcroots")
	if _, err := os.Lstat(gcroots); errors.Is(err, fs.ErrNotExist) {
		// Nix creates gcroots/profiles -> profiles only together with
		// gcroots itself; do the same so stores look alike.
		if err := os.MkdirAll(gcroots, 0o755); err != nil {
			return fmt.Errorf("store: creating %s: %w", gcroots, err)
		}
		link := filepath.Join(gcroots, "profiles")
		if err := os.Symlink(filepath.Join(s.stateDir, "profiles"), link); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("store: creating %s: %w", link, err)
		}
	} else if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// openDB checks db/schema and opens (or creates) db.sqlite.
func (s *Store) openDB(ctx context.Context, dbDir string) error {
	schemaFile := filepath.Join(dbDir, "schema")
	dbFile := filepath.Join(dbDir, "db.sqlite")

	create := false
	b, err := os.ReadFile(schemaFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Nix treats a missing schema file as a new store and runs
		// schema.sql, whose statements are all "if not exists".
		create = true
	case err != nil:
		return fmt.Errorf("store: reading %s: %w", schemaFile, err)
	default:
		// Nix parses the whole file as an integer (boost::lexical_cast),
		// so "10\n" would be corrupt to it; be as strict.
		v, perr := strconv.Atoi(string(b))
		if perr != nil {
			return fmt.Errorf("store: %s is corrupt (content %q): %w", schemaFile, b, ErrSchema)
		}
		if v != SchemaVersion {
			return fmt.Errorf("store: %s: database schema version %d, only %d is supported (let Nix 2.x upgrade it first): %w",
				schemaFile, v, SchemaVersion, ErrSchema)
		}
	}

	db, err := sql.Open("sqlite", dsn(dbFile))
	if err != nil {
		return fmt.Errorf("store: opening %s: %w", dbFile, err)
	}
	// WAL lets readers run alongside one writer; a handful of pooled
	// connections is plenty and keeps file descriptors bounded.
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(4)
	err = retryBusy(ctx, func() error { return db.PingContext(ctx) })
	if err == nil && create {
		err = retryBusy(ctx, func() error { return createTables(ctx, db) })
		if err == nil {
			err = writeFileAtomic(schemaFile, []byte(strconv.Itoa(SchemaVersion)), 0o644)
		}
	}
	if err == nil {
		err = checkTables(ctx, db)
	}
	if err != nil {
		db.Close()
		return fmt.Errorf("store: opening %s: %w", dbFile, err)
	}
	s.db = db
	return nil
}

// createTables runs Nix's schema with each commit synced: the schema file
// written next says the tables exist, and with synchronous=NORMAL a power
// cut could leave that file over a database without them, a store that
// never opens again. (Syncing the files from outside SQLite is not an
// option: closing any descriptor of a database file drops the process's
// POSIX locks on it, which SQLite relies on.)
func createTables(ctx context.Context, db *sql.DB) error {
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "pragma synchronous = FULL"); err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, schemaSQL)
	if _, rerr := c.ExecContext(ctx, "pragma synchronous = NORMAL"); rerr != nil {
		// Never hand a connection back to the pool in the wrong mode.
		c.Raw(func(any) error { return driver.ErrBadConn })
	}
	return err
}

// checkTables catches a schema file that says 10 over a database that is
// something else (or empty), before we write rows into it.
func checkTables(ctx context.Context, db *sql.DB) error {
	var n int
	err := retryBusy(ctx, func() error {
		return db.QueryRowContext(ctx,
			`select count(*) from sqlite_master where type = 'table' and name in ('ValidPaths', 'Refs', 'DerivationOutputs')`).Scan(&n)
	})
	if err != nil {
		return err
	}
	if n != 3 {
		return fmt.Errorf("missing Nix tables (found %d of ValidPaths, Refs, DerivationOutputs): %w", n, ErrSchema)
	}
	return nil
}

// dsn builds the connection string. The pragmas are Nix's (openDB and
// SQLite::SQLite in Nix 2.8) and are set on every pooled connection.
func dsn(file string) string {
	q := url.Values{}
	for _, p := range []string{
		"busy_timeout(" + strconv.Itoa(busyTimeoutMillis) + ")",
		"foreign_keys(1)",
		"journal_mode(WAL)",
		"synchronous(NORMAL)",
		"wal_autocheckpoint(40000)",
	} {
		q.Add("_pragma", p)
	}
	// Our writes use withWriteTx; should a database/sql Tx ever be used,
	// it too must begin immediate (see withWriteTx).
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: file, RawQuery: q.Encode()}
	// url.URL renders "file:///abs" – SQLite accepts that (empty authority).
	return u.String()
}

// Close releases the database, the big lock and this Store's share of the
// process's temporary roots file (the file is deleted, as Nix does, when
// the last Store of the process using it closes).
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.roots != nil {
			errs = append(errs, s.roots.release())
		}
		if s.db != nil {
			errs = append(errs, s.db.Close())
		}
		if s.bigLock != nil {
			errs = append(errs, s.bigLock.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Root returns the absolute root directory the store lives under.
func (s *Store) Root() string { return s.root }

// StoreDir returns the real directory holding the store paths,
// <root>/nix/store.
func (s *Store) StoreDir() string { return s.storeDir }

// StateDir returns <root>/nix/var/nix.
func (s *Store) StateDir() string { return s.stateDir }

// RealPath returns where p lives on disk: <root>/nix/store/<base>.
func (s *Store) RealPath(p storepath.Path) string {
	return filepath.Join(s.storeDir, p.Base())
}

// writeFileAtomic writes via a temporary file and rename so readers (Nix
// included) never see a partial file.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// withWriteTx runs fn in a write transaction on one connection, begun
// with BEGIN IMMEDIATE so that we queue for the write lock up front
// (with the busy timeout) instead of failing when a read transaction
// would have to be upgraded.
//
// It does not use database/sql's Tx: if COMMIT fails, SQLite may keep the
// transaction open, and a Tx would hand that connection back to the pool
// still holding the write lock, stalling every writer (Nix included).
// Here a failed COMMIT is rolled back, and a connection whose state is
// unknown is discarded.
func (s *Store) withWriteTx(ctx context.Context, fn func(c *sql.Conn) error) error {
	c, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "begin immediate"); err != nil {
		return err
	}
	if err := fn(c); err != nil {
		rollback(c)
		return err
	}
	if _, err := c.ExecContext(ctx, "commit"); err != nil {
		rollback(c)
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// rollback ends c's transaction; if that fails, c is dropped from the
// pool rather than reused in an unknown state.
func rollback(c *sql.Conn) {
	if _, err := c.ExecContext(context.Background(), "rollback"); err != nil {
		c.Raw(func(any) error { return driver.ErrBadConn })
	}
}

// isBusy reports SQLITE_BUSY (any extended variant) and SQLITE_PROTOCOL,
// the errors Nix's retrySQLite retries.
func isBusy(err error) bool {
	var se interface{ Code() int }
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case 5, 15: // SQLITE_BUSY, SQLITE_PROTOCOL
		return true
	}
	return false
}

// NoSpace reports whether err says the store's filesystem is full: a
// write failed with ENOSPC or EDQUOT, or SQLite found the database or
// disk full (SQLITE_FULL, which its Unix VFS returns for ENOSPC).
func NoSpace(err error) bool {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return true
	}
	var se interface{ Code() int }
	return errors.As(err, &se) && se.Code()&0xff == 13 // SQLITE_FULL
}

// busyRetryDelay is the pause between SQLite attempts that found the
// database busy beyond the busy timeout.
const busyRetryDelay = 10 * time.Millisecond

// sleepCtx sleeps for d or until ctx ends, whichever is first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryBusy runs fn until it succeeds, fails with something other than
// "busy", or ctx ends – like Nix's retrySQLite, but cancellable.
func retryBusy(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if err == nil || !isBusy(err) {
			return err
		}
		if cerr := sleepCtx(ctx, busyRetryDelay); cerr != nil {
			return fmt.Errorf("%w (gave up waiting: %w)", err, cerr)
		}
	}
}

const storeDirPrefix = storepath.StoreDir + "/"

// trimStoreDir maps "/nix/store/<base>" to "<base>"; it is used on values
// read from the database, which Nix writes as absolute store paths.
func trimStoreDir(abs string) string {
	return strings.TrimPrefix(abs, storeDirPrefix)
}
