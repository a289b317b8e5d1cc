package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// tempRoots is one process's temporary-roots file for one state
// directory, <state>/temproots/<pid>. The name is per process, not per
// Store, so every Store of this process on the same root must share one
// open file: a second open would, following Nix, unlink the first as
// stale, and a second flock on it would conflict with the first.
type tempRoots struct {
	stateDir string
	refs     int // guarded by tempRootsMu

	mu     sync.Mutex // serialises appends, like Nix's state lock
	file   *os.File   // nil until the first root is added
	gcLock *os.File   // <state>/gc.lock, opened on first use

	// What the file must keep (guarded by mu): the roots added for the
	// process's lifetime, and those held for a while (HoldTempRoots) with
	// their holders' counts. A path in either is in the file, so adding
	// it again appends nothing. records counts the file's records.
	pinned  map[storepath.Path]bool
	held    map[storepath.Path]int
	records int
}

// fileName is the roots file's name, temproots/<pid>.
func (tr *tempRoots) fileName() string {
	return filepath.Join(tr.stateDir, "temproots", strconv.Itoa(os.Getpid()))
}

var (
	tempRootsMu  sync.Mutex
	tempRootsFor = map[string]*tempRoots{}
)

func acquireTempRoots(stateDir string) *tempRoots {
	tempRootsMu.Lock()
	defer tempRootsMu.Unlock()
	tr := tempRootsFor[stateDir]
	if tr == nil {
		tr = &tempRoots{stateDir: stateDir, pinned: map[storepath.Path]bool{}, held: map[storepath.Path]int{}}
		tempRootsFor[stateDir] = tr
	}
	tr.refs++
	return tr
}

// release drops one Store's reference. The last one closes and deletes
// the file as Nix's ~LocalStore does (close, then unlink); the roots go
// with it, so callers must have made permanent roots by then.
func (tr *tempRoots) release() error {
	tempRootsMu.Lock()
	tr.refs--
	last := tr.refs == 0
	if last {
		delete(tempRootsFor, tr.stateDir)
	}
	tempRootsMu.Unlock()
	if !last {
		return nil
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var errs []error
	if tr.file != nil {
		name := tr.fileName()
		errs = append(errs, tr.file.Close())
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		tr.file = nil
		tr.records = 0
		clear(tr.pinned)
		clear(tr.held)
	}
	if tr.gcLock != nil {
		errs = append(errs, tr.gcLock.Close())
		tr.gcLock = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("store: closing temporary roots: %w", err)
	}
	return nil
}

// TempRootsFile returns the name of this process's temporary roots file
// (it exists only once a root has been added).
func (s *Store) TempRootsFile() string {
	return filepath.Join(s.stateDir, "temproots", strconv.Itoa(os.Getpid()))
}

// AddTempRoots protects paths from the garbage collector for as long as
// this process keeps the store open, with Nix 2.8's protocol
// (LocalStore::addTempRoot in gc.cc):
//
//   - the roots file temproots/<pid> is created once and kept write-locked;
//     a collector that can lock it knows its owner is dead;
//   - a shared lock on gc.lock, taken without waiting, tells whether a
//     collector is running (it holds gc.lock exclusively). If none is,
//     appending under that shared lock is enough: a collector starting
//     later reads the file. If one is, it has already read the file, so
//     each path is also sent to its socket, and we wait for its
//     acknowledgement (it delays that while it is deleting the path).
//   - each root is appended as "<absolute store path>\0".
//
// The Nix collector matches temporary roots by hash part, so a root for p
// also protects p's lock file and TempPath(p).
func (s *Store) AddTempRoots(ctx context.Context, paths ...storepath.Path) error {
	return s.addTempRoots(ctx, paths, false)
}

// addTempRoots adds paths to the roots file unless they are in it, then
// records them as held (hold) or pinned for the process's lifetime.
func (s *Store) addTempRoots(ctx context.Context, paths []storepath.Path, hold bool) error {
	if len(paths) == 0 {
		return nil
	}
	tr := s.roots
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var todo []storepath.Path
	seen := make(map[storepath.Path]bool, len(paths))
	for _, p := range paths {
		if !tr.pinned[p] && tr.held[p] == 0 && !seen[p] {
			seen[p] = true
			todo = append(todo, p)
		}
	}
	if err := s.appendTempRoots(ctx, todo); err != nil {
		return err
	}
	tr.records += len(todo)
	for _, p := range paths {
		if hold {
			tr.held[p]++
		} else {
			tr.pinned[p] = true
		}
	}
	return nil
}

// appendTempRoots is AddTempRoots' protocol for paths not yet in the
// file; tr.mu is held.
func (s *Store) appendTempRoots(ctx context.Context, paths []storepath.Path) error {
	if len(paths) == 0 {
		return nil
	}
	tr := s.roots
	if tr.file == nil {
		f, err := createTempRootsFile(ctx, s.TempRootsFile())
		if err != nil {
			return err
		}
		tr.file = f
	}
	if tr.gcLock == nil {
		f, err := storefs.OpenLockFile(filepath.Join(s.stateDir, "gc.lock"))
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		tr.gcLock = f
	}

	var rec []byte
	for _, p := range paths {
		rec = append(rec, p.Absolute()...)
		rec = append(rec, 0)
	}

	written := false
	for {
		ok, err := storefs.TryLock(tr.gcLock, storefs.Shared)
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		if ok && written {
			return storefs.Unlock(tr.gcLock)
		}
		if ok {
			// No collector: append while holding the shared lock, so none
			// can start before the roots are in the file.
			_, werr := tr.file.Write(rec)
			uerr := storefs.Unlock(tr.gcLock)
			if err := errors.Join(werr, uerr); err != nil {
				return fmt.Errorf("store: writing temporary roots to %s: %w", tr.fileName(), err)
			}
			return nil
		}
		// A collector is running. Record the roots in the file before telling
		// it: a collector that reads the file after our ack (the next one)
		// then finds them too. Nix writes after the ack, which leaves that
		// window open.
		if !written {
			if _, err := tr.file.Write(rec); err != nil {
				return fmt.Errorf("store: writing temporary roots to %s: %w", tr.fileName(), err)
			}
			written = true
		}
		retry, err := s.sendRootsToCollector(ctx, paths)
		if err != nil {
			return err
		}
		if retry {
			// The collector went away or has not opened its socket yet;
			// look at gc.lock again, as Nix does ("goto restart").
			if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
				return fmt.Errorf("store: adding temporary roots: %w", err)
			}
			continue
		}
		return nil
	}
}

// createTempRootsFile creates and write-locks temproots/<pid>. A file
// already there must be stale (pids are unique among live processes);
// Nix unlinks it. If the collector deletes the new file between our open
// and our lock, storefs.Acquire notices and starts again.
func createTempRootsFile(ctx context.Context, name string) (*os.File, error) {
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: removing stale temporary roots file %s: %w", name, err)
	}
	l, _, err := storefs.Acquire(ctx, name, true)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return l.File(), nil
}

// sendRootsToCollector tells a running collector about paths over
// <state>/gc-socket/socket: one "<absolute path>\n" per root, each
// answered by the byte '1'. The collector reads byte by byte and answers
// line by line, so all lines are written at once and the answers read
// afterwards. retry=true means the collector is gone or not yet
// listening.
func (s *Store) sendRootsToCollector(ctx context.Context, paths []storepath.Path) (retry bool, err error) {
	sock := filepath.Join(s.stateDir, "gc-socket", "socket")
	conn, err := dialUnix(ctx, sock)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) {
			return true, nil
		}
		if ctx.Err() != nil {
			return false, fmt.Errorf("store: connecting to garbage collector at %s: %w", sock, ctx.Err())
		}
		return false, fmt.Errorf("store: connecting to garbage collector at %s: %w", sock, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	var msg []byte
	for _, p := range paths {
		msg = append(msg, p.Absolute()...)
		msg = append(msg, '\n')
	}
	werrc := make(chan error, 1)
	go func() {
		_, err := conn.Write(msg)
		werrc <- err
	}()
	// abandon stops the writer before we leave: closing the socket makes
	// a blocked Write return.
	abandon := func() {
		conn.Close()
		<-werrc
	}
	r := bufio.NewReader(conn)
	for i := range paths {
		c, err := r.ReadByte()
		if err != nil {
			abandon()
			if ctx.Err() != nil {
				return false, fmt.Errorf("store: sending temporary roots to %s: %w", sock, ctx.Err())
			}
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
				// Collector finished mid-way: Nix restarts from the lock
				// check; re-sending the roots already acknowledged is
				// harmless.
				return true, nil
			}
			return false, fmt.Errorf("store: sending temporary roots to %s: %w", sock, err)
		}
		if c != '1' {
			abandon()
			return false, fmt.Errorf("store: garbage collector at %s answered %q for %s, want '1'", sock, c, paths[i].Absolute())
		}
	}
	if err := <-werrc; err != nil {
		return false, fmt.Errorf("store: sending temporary roots to %s: %w", sock, err)
	}
	return false, nil
}

// dialUnix connects to a Unix socket. sun_path holds only 107 bytes; for
// longer names (deep test roots) it goes through /proc/self/fd of the
// open directory, as Nix forks and chdirs for the same reason.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) < 100 {
		return d.DialContext(ctx, "unix", path)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	short := fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path))
	return d.DialContext(ctx, "unix", short)
}
