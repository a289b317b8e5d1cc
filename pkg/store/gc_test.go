package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// gcFixture builds stores by hand for the collector's tests.
type gcFixture struct {
	t    *testing.T
	root string
	s    *Store // the populating Store; close it to drop its temporary roots
}

func newGCFixture(t *testing.T) *gcFixture {
	root := t.TempDir()
	return &gcFixture{t: t, root: root, s: openStore(t, root)}
}

// add installs and registers a path whose single file refers to refs
// (and to itself if self), with the given registration time (zero: now).
func (f *gcFixture) add(name string, refs []storepath.Path, self bool, deriver storepath.Path, reg time.Time) storepath.Path {
	f.t.Helper()
	p := fakePath(f.t, name)
	content := "contents of " + name + "\n"
	for _, r := range refs {
		content += "uses " + r.Absolute() + "\n"
	}
	if self {
		content += "self " + p.Absolute() + "\n"
	}
	f.register(p, []treeEntry{{name: "share/" + name, content: content}}, refs, self, deriver, reg)
	return p
}

func (f *gcFixture) register(p storepath.Path, entries []treeEntry, refs []storepath.Path, self bool, deriver storepath.Path, reg time.Time) {
	f.t.Helper()
	info := install(f.t, f.s, p, entries)
	info.References = slices.Clone(refs)
	if self {
		info.References = append(info.References, p)
	}
	info.Deriver = string(deriver)
	info.RegistrationTime = reg
	if err := f.s.Register(context.Background(), []PathInfo{info}); err != nil {
		f.t.Fatal(err)
	}
}

// addDrv registers a derivation whose single output is out.
func (f *gcFixture) addDrv(drv, out storepath.Path) {
	f.t.Helper()
	text := `Derive([("out","` + out.Absolute() + `","","")],[],[],"x86_64-linux","/bin/sh",[],[("out","` + out.Absolute() + `")])`
	f.register(drv, []treeEntry{{content: text}}, nil, false, "", time.Time{})
}

func (f *gcFixture) link(name, target string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink(target, name); err != nil {
		f.t.Fatal(err)
	}
}

// nixDead is real Nix's list of dead paths (its --print-dead also deletes
// store entries that are not store paths, stale temporary-roots files and
// stale indirect roots).
func nixDead(t *testing.T, root string, opts ...string) []string {
	t.Helper()
	return lines(nixStore(t, root, append([]string{"--gc", "--print-dead"}, opts...)...))
}

func sortedDead(res *GCResult) []string {
	return slices.Sorted(slices.Values(res.Dead))
}

// assertValid checks that paths are valid and on disk.
func assertValid(t *testing.T, s *Store, paths ...storepath.Path) {
	t.Helper()
	v, err := s.ValidSubset(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if !v[p] {
			t.Errorf("%s is not valid", p)
		}
		if _, err := os.Lstat(s.RealPath(p)); err != nil {
			t.Errorf("%s is valid but not on disk: %v", p, err)
		}
	}
}

func assertGone(t *testing.T, s *Store, paths ...storepath.Path) {
	t.Helper()
	v, err := s.ValidSubset(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if v[p] {
			t.Errorf("%s is still valid", p)
		}
		if _, err := os.Lstat(s.RealPath(p)); !os.IsNotExist(err) {
			t.Errorf("%s is still on disk (%v)", p, err)
		}
	}
}

// TestGCAgreesWithNix builds a store with every kind of root Nix 2.8
// knows and several kinds of garbage, and checks that our dry run and
// `nix-store --gc --print-dead` name exactly the same dead paths (with
// Nix's default keep-* settings and with the opposite ones), that our
// collection deletes exactly those, and that Nix then finds the store
// consistent and nothing left to collect.
//
// The indirect roots here name their targets with relative links inside
// the store's root: Nix with a chroot store (local?root=) looks the
// targets of indirect roots up on this machine, we look them up inside
// the root, and relative links are where both read the same files.
// TestGCNixOSRoots has absolute ones, compared with Nix run with the
// root as its "/".
func TestGCAgreesWithNix(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	f := newGCFixture(t)
	s := f.s
	gcroots := filepath.Join(s.StateDir(), "gcroots")
	ext := filepath.Join(f.root, "home", "u") // like a user's ./result
	const fromAuto, fromGCRoots = "../../../../../home/u/", "../../../../home/u/"

	// Rooted chain a -> b -> c (b refers to itself too).
	c := f.add("libc", nil, false, "", time.Time{})
	b := f.add("libb", []storepath.Path{c}, true, "", time.Time{})
	a := f.add("app", []storepath.Path{b}, false, "", time.Time{})
	if err := s.AddGCRoot(ctx, "app", a); err != nil {
		t.Fatal(err)
	}
	// Dead chain e -> d -> c: d and e go, c stays.
	d := f.add("libd", []storepath.Path{c}, false, "", time.Time{})
	e := f.add("tool", []storepath.Path{d}, false, "", time.Time{})
	// Dead with a self-reference.
	self := f.add("selfish", nil, true, "", time.Time{})
	// A root that was removed.
	unrooted := f.add("unrooted", nil, false, "", time.Time{})
	if err := s.AddGCRoot(ctx, "gone", unrooted); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveGCRoot("gone"); err != nil {
		t.Fatal(err)
	}
	// Indirect root: gcroots/auto/x -> ext/result -> store path.
	indirect := f.add("indirect", nil, false, "", time.Time{})
	f.link(filepath.Join(ext, "result"), indirect.Absolute())
	f.link(filepath.Join(gcroots, "auto", "abc"), fromAuto+"result")
	// A stale indirect root (Nix removes it, we leave it) and a dangling
	// link outside auto (both leave it).
	f.link(filepath.Join(gcroots, "auto", "stale"), fromAuto+"missing")
	f.link(filepath.Join(gcroots, "dangling"), fromGCRoots+"missing")
	// A profile with a generation link, rooted via profiles/.
	prof := f.add("profile", nil, false, "", time.Time{})
	f.link(filepath.Join(s.StateDir(), "profiles", "p-1-link"), prof.Absolute())
	f.link(filepath.Join(s.StateDir(), "profiles", "p"), "p-1-link")
	// A symlink to a directory of roots: Nix 2.8 does not follow it.
	behindDir := f.add("behind-dir-link", nil, false, "", time.Time{})
	f.link(filepath.Join(ext, "roots", "r"), behindDir.Absolute())
	f.link(filepath.Join(gcroots, "linkdir"), fromGCRoots+"roots")
	// A regular file named like a store path is a root.
	fileRoot := f.add("file-root", nil, false, "", time.Time{})
	if err := os.WriteFile(filepath.Join(gcroots, fileRoot.Base()), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A root into a path that is not valid: ignored.
	f.link(filepath.Join(gcroots, "invalid"), fakePath(t, "never-valid").Absolute())
	// keep-derivations: a live output keeps its valid deriver.
	out := fakePath(t, "built")
	drv := fakePath(t, "built.drv")
	f.addDrv(drv, out)
	f.register(out, []treeEntry{{content: "built\n"}}, nil, false, drv, time.Time{})
	if err := s.AddGCRoot(ctx, "built", out); err != nil {
		t.Fatal(err)
	}
	// keep-outputs: a live derivation keeps its valid outputs.
	out2 := fakePath(t, "other")
	drv2 := fakePath(t, "other.drv")
	f.addDrv(drv2, out2)
	f.register(out2, []treeEntry{{content: "other\n"}}, nil, false, drv2, time.Time{})
	if err := s.AddGCRoot(ctx, "other-drv", drv2); err != nil {
		t.Fatal(err)
	}
	// Runtime root: a process with the path in its environment.
	runtime := f.add("runtime", nil, false, "", time.Time{})
	sleeper := exec.Command("sleep", "300")
	sleeper.Env = append(os.Environ(), "STOREPKG_GC_TEST="+runtime.Absolute()+"/bin/x")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	// Temporary roots of a live process (this one, below) keep a valid
	// path with its closure, and a temporary unpack directory.
	tempRefd := f.add("temp-ref", nil, false, "", time.Time{})
	tempRooted := f.add("temp-rooted", []storepath.Path{tempRefd}, false, "", time.Time{})
	unpacking := fakePath(t, "unpacking")
	// A stale temporary-roots file (no live owner) protects nothing.
	staleRooted := f.add("stale-rooted", nil, false, "", time.Time{})

	// Close the populating Store: its temporary roots go with it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	holder := openStore(t, f.root)
	if err := holder.AddTempRoots(ctx, tempRooted, unpacking); err != nil {
		t.Fatal(err)
	}
	writeTree(t, holder.TempPath(unpacking), []treeEntry{{name: "f", content: "in progress"}})
	staleFile := filepath.Join(holder.StateDir(), "temproots", "999999999")
	if err := os.WriteFile(staleFile, []byte(staleRooted.Absolute()+"\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Leftovers: a killed unpack, a lock file, an unregistered tree, and
	// a name that is not a store path.
	killed := fakePath(t, "killed")
	writeTree(t, holder.TempPath(killed), []treeEntry{{name: "bin/x", content: "half", exec: true}})
	lockOf := fakePath(t, "locked-once")
	if err := os.WriteFile(holder.RealPath(lockOf)+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	unregistered := fakePath(t, "unregistered")
	writeTree(t, holder.RealPath(unregistered), []treeEntry{{name: "x", content: "x"}})
	if err := os.WriteFile(filepath.Join(holder.StoreDir(), "not-a-store-path"), []byte("junk"), 0o444); err != nil {
		t.Fatal(err)
	}

	gs := openStore(t, f.root)
	abs := func(ps ...storepath.Path) []string { return absAll(ps) }
	wantDead := slices.Sorted(slices.Values(append(abs(d, e, self, unrooted, behindDir, out2, staleRooted),
		filepath.Join(storepath.StoreDir, filepath.Base(holder.TempPath(killed))),
		lockOf.Absolute()+".lock", unregistered.Absolute(), storepath.StoreDir+"/not-a-store-path")))
	live := []storepath.Path{a, b, c, indirect, prof, fileRoot, out, drv, drv2, runtime, tempRooted, tempRefd}

	ours, err := gs.CollectGarbage(ctx, GCOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedDead(ours); !slices.Equal(got, wantDead) {
		t.Errorf("our dry run:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantDead, "\n"))
	}
	t.Logf("dry run: %d dead (%d valid, %d leftovers), %d bytes, %d roots, %d live",
		len(ours.Dead), ours.Valid, ours.Leftovers, ours.BytesFreed, ours.Roots, ours.Live)
	if ours.BytesFreed == 0 {
		t.Error("dry run reports 0 bytes")
	}
	for _, p := range []string{staleFile, filepath.Join(gcroots, "auto", "stale"), filepath.Join(gs.StoreDir(), "not-a-store-path")} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("dry run removed %s: %v", p, err)
		}
	}

	// Real Nix agrees (and removes what its --print-dead removes).
	if theirs := nixDead(t, f.root); !slices.Equal(theirs, sortedDead(ours)) {
		t.Errorf("nix-store --gc --print-dead:\n%s\nours:\n%s", strings.Join(theirs, "\n"), strings.Join(sortedDead(ours), "\n"))
	}
	// And with the opposite keep-* settings: out2 lives (its rooted
	// deriver keeps it), drv dies (its output no longer keeps it).
	flipped, err := gs.CollectGarbage(ctx, GCOptions{DryRun: true, KeepOutputs: true, NoKeepDerivations: true})
	if err != nil {
		t.Fatal(err)
	}
	theirs := nixDead(t, f.root, "--option", "keep-outputs", "true", "--option", "keep-derivations", "false")
	if !slices.Equal(theirs, sortedDead(flipped)) {
		t.Errorf("keep-outputs, no keep-derivations: Nix\n%s\nours:\n%s", strings.Join(theirs, "\n"), strings.Join(sortedDead(flipped), "\n"))
	}
	if !slices.Contains(flipped.Dead, drv.Absolute()) || slices.Contains(flipped.Dead, out2.Absolute()) {
		t.Errorf("keep-outputs/keep-derivations not applied: %v", flipped.Dead)
	}

	// What Nix's --print-dead removed comes back, for our collector to
	// remove (but for the stale indirect root, which it leaves).
	if _, err := os.Lstat(filepath.Join(gcroots, "auto", "stale")); !os.IsNotExist(err) {
		t.Errorf("Nix did not remove the stale indirect root: %v", err)
	}
	f.link(filepath.Join(gcroots, "auto", "stale"), fromAuto+"missing")
	if err := os.WriteFile(staleFile, []byte(staleRooted.Absolute()+"\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gs.StoreDir(), "not-a-store-path"), []byte("junk"), 0o444); err != nil {
		t.Fatal(err)
	}

	res, err := gs.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("collection: %d dead (%d valid, %d leftovers), %d bytes freed, %d kept late",
		len(res.Dead), res.Valid, res.Leftovers, res.BytesFreed, res.KeptLate)
	if got := sortedDead(res); !slices.Equal(got, wantDead) {
		t.Errorf("collection deleted:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantDead, "\n"))
	}
	if res.BytesFreed != ours.BytesFreed {
		t.Errorf("freed %d bytes, the dry run said %d", res.BytesFreed, ours.BytesFreed)
	}
	// Referrers went before their references.
	if slices.Index(res.Dead, e.Absolute()) > slices.Index(res.Dead, d.Absolute()) {
		t.Errorf("%s deleted before its referrer %s: %v", d, e, res.Dead)
	}
	for _, p := range wantDead {
		if _, err := os.Lstat(filepath.Join(gs.StoreDir(), filepath.Base(p))); !os.IsNotExist(err) {
			t.Errorf("%s still on disk: %v", p, err)
		}
	}
	if _, err := os.Lstat(staleFile); !os.IsNotExist(err) {
		t.Errorf("stale %s not removed: %v", staleFile, err)
	}
	for _, p := range []string{filepath.Join(gcroots, "auto", "stale"), filepath.Join(gcroots, "dangling")} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("our collection removed the link %s: %v", p, err)
		}
	}
	if len(res.Unresolved) != 0 {
		t.Errorf("unresolved roots: %v", res.Unresolved)
	}
	assertValid(t, gs, live...)
	if _, err := os.Stat(holder.TempPath(unpacking)); err != nil {
		t.Errorf("temp-rooted unpack directory removed: %v", err)
	}
	nixtest.Verify(t, f.root)
	if left := nixDead(t, f.root); len(left) != 0 {
		t.Errorf("after our collection Nix still finds garbage:\n%s", strings.Join(left, "\n"))
	}
}

// TestGCSocket pauses our collector at three points and adds temporary
// roots meanwhile: from this process (AddTempRoots, which must go through
// the socket because the collector holds gc.lock) and from real Nix
// (`nix-store -r` of a valid path adds a temporary root first). Roots
// that arrive after the dead paths were determined still protect them
// and their references; a root for the path being deleted right now is
// acknowledged only after the deletion, so its client then sees the
// path invalid.
func TestGCSocket(t *testing.T) {
	needNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newGCFixture(t)
	early := f.add("early", nil, false, "", time.Time{})
	viaNix := f.add("via-nix", nil, false, "", time.Time{})
	lateRef := f.add("late-ref", nil, false, "", time.Time{})
	late := f.add("late", []storepath.Path{lateRef}, false, "", time.Time{})
	doomed := f.add("doomed", nil, false, "", time.Time{})
	other := f.add("other", nil, false, "", time.Time{})
	f.s.Close()

	gs := openStore(t, f.root)
	client := openStore(t, f.root) // shares this process's roots file, not gc.lock's descriptor
	gcLockHeld := func() bool {
		l, err := storefs.OpenLockFile(filepath.Join(gs.StateDir(), "gc.lock"))
		if err != nil {
			t.Error(err)
			return false
		}
		defer l.Close()
		ok, _ := storefs.TryLock(l, storefs.Shared)
		return !ok
	}

	var hookErrs []string
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		hookErrs = append(hookErrs, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	var clientDone chan error
	var clientReturnedEarly bool
	testHookGC = func(stage, name string) {
		switch {
		case stage == "roots":
			if !gcLockHeld() {
				fail("gc.lock is not held during the collection")
			}
			if err := client.AddTempRoots(ctx, early); err != nil {
				fail("AddTempRoots(early): %v", err)
			}
			out, err := nixCmd(ctx, f.root, nil, "-r", viaNix.Absolute()).CombinedOutput()
			if err != nil {
				fail("nix-store -r %s: %v\n%s", viaNix, err, out)
			}
			// Garbage is answered too, and the connection stays usable.
			conn, err := dialUnix(ctx, filepath.Join(gs.StateDir(), "gc-socket", "socket"))
			if err != nil {
				fail("dial: %v", err)
				return
			}
			defer conn.Close()
			conn.Write([]byte("not a store path\n/nix/store/short\n"))
			r := bufio.NewReader(conn)
			for i := 0; i < 2; i++ {
				if b, err := r.ReadByte(); err != nil || b != '1' {
					fail("answer to garbage: %q, %v", b, err)
				}
			}
		case stage == "plan":
			if err := client.AddTempRoots(ctx, late); err != nil {
				fail("AddTempRoots(late): %v", err)
			}
		case stage == "delete" && name == doomed.Base():
			clientDone = make(chan error, 1)
			go func() { clientDone <- client.AddTempRoots(ctx, doomed) }()
			select {
			case err := <-clientDone:
				clientReturnedEarly = true
				clientDone <- err
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
	defer func() { testHookGC = nil }()

	res, err := gs.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testHookGC = nil
	for _, e := range hookErrs {
		t.Error(e)
	}
	if clientDone == nil {
		t.Fatal("the collector never deleted the doomed path")
	}
	if clientReturnedEarly {
		t.Error("a root for the path being deleted was acknowledged before the deletion ended")
	}
	if err := <-clientDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted %v, kept late %d", res.Dead, res.KeptLate)
	assertValid(t, gs, early, viaNix, late, lateRef)
	assertGone(t, gs, doomed, other)
	if res.KeptLate != 2 {
		t.Errorf("KeptLate = %d, want 2 (late and its reference)", res.KeptLate)
	}
	if gcLockHeld() {
		t.Error("gc.lock still held after the collection")
	}
	nixtest.Verify(t, f.root)

	// The socket file stays, as Nix leaves it; a client that finds it
	// without a collector is refused and uses its roots file.
	if _, err := os.Stat(filepath.Join(gs.StateDir(), "gc-socket", "socket")); err != nil {
		t.Errorf("socket file: %v", err)
	}
	if err := client.AddTempRoots(ctx, other); err != nil {
		t.Fatal(err)
	}
}

// TestGCWaitsForGCLock: our collector queues behind whoever holds
// gc.lock (another collector, Nix's or ours), as long as the context
// allows.
func TestGCWaitsForGCLock(t *testing.T) {
	needNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newGCFixture(t)
	p := f.add("p", nil, false, "", time.Time{})
	f.s.Close()
	gs := openStore(t, f.root)
	l, err := storefs.OpenLockFile(filepath.Join(gs.StateDir(), "gc.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := storefs.WaitLock(ctx, l, storefs.Exclusive); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := gs.CollectGarbage(ctx, GCOptions{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("collection ran while another holds gc.lock: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	storefs.Unlock(l)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	assertGone(t, gs, p)

	// A cancelled wait returns the context's error, naming the lock.
	storefs.WaitLock(ctx, l, storefs.Exclusive)
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if _, err := gs.CollectGarbage(short, GCOptions{}); err == nil || !strings.Contains(err.Error(), "gc.lock") {
		t.Errorf("collection with the lock held elsewhere: %v", err)
	}
}

// TestGCMinAge: paths registered recently are roots, with their closure.
func TestGCMinAge(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	f := newGCFixture(t)
	old := time.Now().Add(-2 * time.Hour)
	oldRef := f.add("old-ref", nil, false, "", old)
	oldTop := f.add("old-top", []storepath.Path{oldRef}, false, "", old)
	youngRef := f.add("young-ref", nil, false, "", old) // old itself, but a young path needs it
	young := f.add("young", []storepath.Path{youngRef}, false, "", time.Now())
	// Registered half a second less than MinAge ago: young, although the
	// database keeps whole seconds. Early in a second, so that the
	// registration's second is the cutoff's: a strict comparison would
	// take it for old.
	for time.Now().Nanosecond() >= 300_000_000 {
		time.Sleep(10 * time.Millisecond)
	}
	almost := f.add("almost-old", nil, false, "", time.Now().Add(-time.Hour+500*time.Millisecond))
	f.s.Close()
	gs := openStore(t, f.root)

	dry, err := gs.CollectGarbage(ctx, GCOptions{DryRun: true, MinAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(absAll([]storepath.Path{oldRef, oldTop})))
	if got := sortedDead(dry); !slices.Equal(got, want) {
		t.Errorf("dry run with MinAge: %v, want %v", got, want)
	}
	res, err := gs.CollectGarbage(ctx, GCOptions{MinAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedDead(res); !slices.Equal(got, want) {
		t.Errorf("collection with MinAge deleted %v, want %v", got, want)
	}
	assertValid(t, gs, young, youngRef, almost)
	assertGone(t, gs, oldRef, oldTop)
	// Without MinAge they go too.
	if _, err := gs.CollectGarbage(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	assertGone(t, gs, young, youngRef, almost)
}

// TestGCMaxFreed: the collection stops as soon as it has freed at least
// MaxFreed bytes (apparent file sizes), and a dry run predicts it.
func TestGCMaxFreed(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	f := newGCFixture(t)
	const size = 10000
	var paths []storepath.Path
	for i := range 5 {
		p := fakePath(t, fmt.Sprintf("blob-%d", i))
		f.register(p, []treeEntry{{content: strings.Repeat("x", size)}}, nil, false, "", time.Time{})
		paths = append(paths, p)
	}
	f.s.Close()
	gs := openStore(t, f.root)

	dry, err := gs.CollectGarbage(ctx, GCOptions{DryRun: true, MaxFreed: 2*size + 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Dead) != 3 || dry.BytesFreed != 3*size {
		t.Errorf("dry run with MaxFreed: %d paths, %d bytes; want 3, %d", len(dry.Dead), dry.BytesFreed, 3*size)
	}
	res, err := gs.CollectGarbage(ctx, GCOptions{MaxFreed: 2*size + 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dead) != 3 || res.BytesFreed != 3*size {
		t.Errorf("collection with MaxFreed: %d paths, %d bytes; want 3, %d", len(res.Dead), res.BytesFreed, 3*size)
	}
	if !slices.Equal(res.Dead, dry.Dead) {
		t.Errorf("deleted %v, dry run predicted %v", res.Dead, dry.Dead)
	}
	v, _ := gs.ValidSubset(ctx, paths)
	left := 0
	for _, p := range paths {
		if v[p] {
			left++
		}
	}
	if left != 2 {
		t.Errorf("%d paths left, want 2", left)
	}
	res, err = gs.CollectGarbage(ctx, GCOptions{MaxFreed: size})
	if err != nil || len(res.Dead) != 1 {
		t.Errorf("MaxFreed exactly one path: %v, %v", res.Dead, err)
	}
	nixtest.Verify(t, f.root)
}

// TestGCLockFiles: a lock file somebody holds is not deleted even
// without a temporary root; a free one is deleted and marked stale.
func TestGCLockFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	held := fakePath(t, "held")
	// Locked without a temporary root.
	l, ok, err := s.LockPath(ctx, held, false)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	defer l.Unlock()
	free := fakePath(t, "free")
	if err := os.WriteFile(s.RealPath(free)+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waiter, err := os.OpenFile(s.RealPath(free)+".lock", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	res, err := s.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Dead, []string{free.Absolute() + ".lock"}) || res.KeptLate != 1 {
		t.Errorf("Dead = %v, KeptLate = %d", res.Dead, res.KeptLate)
	}
	if _, err := os.Stat(l.Path()); err != nil {
		t.Errorf("held lock file deleted: %v", err)
	}
	// One who opened the free lock before it was deleted sees it stale.
	if fi, err := waiter.Stat(); err != nil || fi.Size() == 0 {
		t.Errorf("deleted lock file not marked stale: %v, %v", fi, err)
	}
}

// TestToStoreBase: the store path a path in the store is in, as Nix's
// toStorePath finds it (entry names parsed by storepath.ParseEntryName).
func TestToStoreBase(t *testing.T) {
	h := "0123456789abcdfghijklmnpqrsvwxyz"
	for p, want := range map[string]string{
		"/nix/store/" + h + "-a":         h + "-a",
		"/nix/store/" + h + "-a/":        h + "-a",
		"/nix/store/" + h + "-a/bin/x":   h + "-a",
		"/nix/store/./" + h + "-a/bin/x": "",
		"/nix/store/" + h + "-a b/x":     "",
		"/nix/store":                     "",
		"/nix/store/":                    "",
		"/nix/storeX/" + h + "-a":        "",
	} {
		if got, _ := toStoreBase(p); got != want {
			t.Errorf("toStoreBase(%q) = %q, want %q", p, got, want)
		}
	}
}

// TestGCSocketLongPath: the socket is reachable however deep the store
// root is (sun_path holds 108 bytes).
func TestGCSocketLongPath(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), strings.Repeat("r", 80))
	gs := openStore(t, root)
	client := openStore(t, root)
	p := fakePath(t, "deep")
	if err := os.WriteFile(gs.RealPath(p), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	testHookGC = func(stage, _ string) {
		if stage == "roots" {
			if err := client.AddTempRoots(ctx, p); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookGC = nil }()
	res, err := gs.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dead) != 0 {
		t.Errorf("deleted %v despite the root sent over a %d-byte socket name", res.Dead,
			len(filepath.Join(gs.StateDir(), "gc-socket", "socket")))
	}
	c, err := dialUnix(ctx, filepath.Join(gs.StateDir(), "gc-socket", "socket"))
	if err == nil {
		c.Close()
		t.Error("socket still accepting after the collection")
	}
}

// TestGCAwaitsClientAppend: a client appends an acknowledged root to its
// roots file only after the acknowledgement (Nix's addTempRoot does the
// same). The collector keeps gc.lock until it has, so the next
// collection cannot read the file too early and miss the root.
func TestGCAwaitsClientAppend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := t.TempDir()
	gs := openStore(t, root)
	p := fakePath(t, "slow-client")
	if err := os.WriteFile(gs.RealPath(p), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	// A client of our own pid, by hand, so that it can dawdle.
	rootsFile, err := storefs.OpenLockFile(gs.TempRootsFile())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rootsFile.Close(); os.Remove(rootsFile.Name()) }()
	if err := storefs.WaitLock(ctx, rootsFile, storefs.Exclusive); err != nil {
		t.Fatal(err)
	}
	const dawdle = 300 * time.Millisecond
	appended := make(chan time.Time, 1)
	testHookGC = func(stage, _ string) {
		if stage != "roots" {
			return
		}
		conn, err := dialUnix(ctx, filepath.Join(gs.StateDir(), "gc-socket", "socket"))
		if err != nil {
			t.Error(err)
			return
		}
		conn.Write([]byte(p.Absolute() + "\n"))
		var b [1]byte
		if _, err := conn.Read(b[:]); err != nil || b[0] != '1' {
			t.Errorf("ack: %q, %v", b, err)
		}
		go func() {
			defer conn.Close()
			time.Sleep(dawdle)
			rootsFile.Write([]byte(p.Absolute() + "\x00"))
			appended <- time.Now()
		}()
	}
	defer func() { testHookGC = nil }()
	if _, err := gs.CollectGarbage(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	testHookGC = nil
	select {
	case <-appended:
	default:
		t.Fatal("the collection ended (and released gc.lock) before the client recorded its root")
	}
	// The next collection finds the root in the file.
	res, err := gs.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dead) != 0 {
		t.Errorf("deleted %v", res.Dead)
	}
}

// TestGCAwaitsNoRecordedRoots: our AddTempRoots writes a root to its
// file before it sends it to the collector, so the collector, which
// waits for an acknowledged root to be recorded before it releases
// gc.lock, finds it recorded and need not wait for the file to change
// (it would wait for clientAppendTimeout while the client's Store stays
// open, holding gc.lock and with it every other process's roots).
func TestGCAwaitsNoRecordedRoots(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := t.TempDir()
	gs := openStore(t, root)
	client := openStore(t, root) // this process's roots file, kept open throughout
	first, second := fakePath(t, "first"), fakePath(t, "second")
	for _, p := range []storepath.Path{first, second} {
		if err := os.WriteFile(gs.RealPath(p), []byte("x"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	// A root in the file before the collection, so that it is not new.
	if err := client.AddTempRoots(ctx, first); err != nil {
		t.Fatal(err)
	}
	testHookGC = func(stage, _ string) {
		if stage == "roots" {
			if err := client.AddTempRoots(ctx, second); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookGC = nil }()
	logger, hook := logtest.NewNullLogger()
	res, err := gs.CollectGarbage(ctx, GCOptions{Log: logrus.NewEntry(logger)})
	if err != nil {
		t.Fatal(err)
	}
	testHookGC = nil
	if len(res.Dead) != 0 {
		t.Errorf("deleted %v", res.Dead)
	}
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("the collector warned: %s", e.Message)
		}
	}
}

// TestRemoveStaleRootsFile: a stale roots file is removed and marked, but
// a new file that has meanwhile taken its name (its owner closed its last
// Store and opened another) is left in place.
func TestRemoveStaleRootsFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "12345")
	stale := func() *os.File {
		f, err := storefs.OpenLockFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := storefs.TryLock(f, storefs.Exclusive); !ok || err != nil {
			t.Fatal(ok, err)
		}
		return f
	}
	f := stale()
	if err := removeStaleRootsFile(f, name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(name); !os.IsNotExist(err) {
		t.Errorf("stale file not removed: %v", err)
	}
	if fi, _ := f.Stat(); fi.Size() != 1 {
		t.Errorf("stale file not marked: size %d", fi.Size())
	}
	f.Close()

	f = stale()
	defer f.Close()
	// Keep the old file linked elsewhere, so that it still looks linked
	// when the collector checks, as in the race where its owner removes
	// and recreates the name in between.
	if err := os.Link(name, filepath.Join(dir, ".elsewhere")); err != nil {
		t.Fatal(err)
	}
	os.Remove(name)
	if err := os.WriteFile(name, []byte("/nix/store/new\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := removeStaleRootsFile(f, name); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(name); err != nil || string(b) != "/nix/store/new\x00" {
		t.Errorf("the new file at the name: %q, %v", b, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("left behind: %v", entries)
	}
}
