package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestOpenWaitsForBigLock: while someone holds db/big-lock exclusively
// (Nix upgrading the schema), Open waits, and gives up with the context.
func TestOpenWaitsForBigLock(t *testing.T) {
	root := t.TempDir()
	openStore(t, root).Close()
	f, err := storefs.OpenLockFile(filepath.Join(root, "nix/var/nix/db/big-lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ok, err := storefs.TryLock(f, storefs.Exclusive); !ok || err != nil {
		t.Fatal(ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if s, err := Open(ctx, root); !errors.Is(err, context.DeadlineExceeded) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open under an exclusive big lock = %v", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		storefs.Unlock(f)
	}()
	s, err := Open(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestRegisterWaitsForWriter: another process (the C SQLite of the
// sqlite3 shell, as in Nix) holds the write lock; Register waits rather
// than failing with SQLITE_BUSY, and honours its context.
func TestRegisterWaitsForWriter(t *testing.T) {
	sqlite3 := testenv.LookPath(t, "sqlite3")[0]
	root := t.TempDir()
	s := openStore(t, root)
	cmd := exec.Command(sqlite3, filepath.Join(root, "nix/var/nix/db/db.sqlite"))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	io.WriteString(in, "begin immediate;\nselect 'locked';\n")
	buf := make([]byte, 7)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("sqlite3: %q, %v", buf, err)
	}

	p := fakePath(t, "waits")
	info := PathInfo{Path: p, NarHash: [32]byte{1}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.Register(ctx, []PathInfo{info}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register under another writer with a short context = %v", err)
	}

	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.Register(context.Background(), []PathInfo{info}) }()
	time.Sleep(1500 * time.Millisecond) // beyond one busy timeout
	select {
	case err := <-done:
		t.Fatalf("Register finished while the other writer held the lock: %v", err)
	default:
	}
	io.WriteString(in, "commit;\n.quit\n")
	if err := <-done; err != nil {
		t.Fatalf("Register after the writer committed: %v (after %v)", err, time.Since(start))
	}
	cmd.Wait()
	if v, err := s.ValidSubset(context.Background(), []storepath.Path{p}); err != nil || !v[p] {
		t.Fatal(v, err)
	}
}

// TestConcurrentWithNixGC registers batches while real Nix collects
// garbage in the same database: neither side may fail on contention.
// The synthetic paths have no contents and no roots, so the collector
// deletes (invalidates) what it sees.
func TestConcurrentWithNixGC(t *testing.T) {
	needNix(t)
	root := t.TempDir()
	s := openStore(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var wg, writers sync.WaitGroup
	errs := make(chan error, 100)
	stop := make(chan struct{})
	gcDone := make(chan struct{})
	var gcRuns, deleted atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(gcDone)
		for {
			out, err := nixCmd(ctx, root, nil, "--gc").CombinedOutput()
			if err != nil {
				errs <- fmt.Errorf("nix-store --gc: %v\n%s", err, out)
				return
			}
			gcRuns.Add(1)
			deleted.Add(int64(strings.Count(string(out), "deleting '")))
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	for w := 0; w < 2; w++ {
		wg.Add(1)
		writers.Add(1)
		go func() {
			defer wg.Done()
			defer writers.Done()
			// Until the collector has run a few times over our writes,
			// or for 20 s: on a loaded machine Nix, retrying after
			// SQLITE_BUSY, may finish few collections while we write;
			// once we stop it finishes (the test then needs one run
			// that deleted something).
			var took time.Duration
			begin := time.Now()
			for i := 0; gcRuns.Load() < 3 && time.Since(begin) < 20*time.Second; i++ {
				// Pause between batches, as an installer does, for long
				// enough that we hold the write lock a minority of the
				// time (slow under -race). Nix 2.8 begins its
				// transactions DEFERRED; one that has read and then
				// wants to write while we hold the write lock gets
				// SQLITE_BUSY at once (no busy wait is possible for it)
				// and Nix retries after a random pause, so a writer that
				// hardly ever releases the lock starves Nix.
				select {
				case <-gcDone:
					return
				case <-time.After(20*time.Millisecond + 3*took):
				}
				var infos []PathInfo
				var prev storepath.Path
				for j := 0; j < 100; j++ {
					p := fakePath(t, fmt.Sprintf("c-%d-%d", i, j))
					in := PathInfo{Path: p, NarHash: [32]byte{byte(j + 1)}}
					if prev != "" {
						in.References = []storepath.Path{prev}
					}
					prev = p
					infos = append(infos, in)
				}
				start := time.Now()
				if err := s.Register(ctx, infos); err != nil {
					errs <- err
					return
				}
				took = time.Since(start)
				// The collector walks the store directory, so give each
				// path something there to find – only now: a path that
				// appears before it is valid may be judged dead just
				// before it gets a referrer, which real Nix reports as
				// an error. Installing protects against that with
				// temporary roots; these paths are meant to be collected.
				for _, in := range infos {
					if err := os.WriteFile(s.RealPath(in.Path), nil, 0o444); err != nil {
						errs <- err
						return
					}
				}
				if _, err := s.ValidSubset(ctx, []storepath.Path{prev}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	t.Logf("%d collections ran alongside, deleting %d paths", gcRuns.Load(), deleted.Load())
	if deleted.Load() == 0 {
		t.Error("the collector never saw our paths; the test did not overlap")
	}
	for err := range errs {
		t.Error(err)
	}
	if out, err := nixCmd(context.Background(), root, nil, "--verify").CombinedOutput(); err != nil {
		t.Fatalf("nix-store --verify: %v\n%s", err, out)
	}
}
