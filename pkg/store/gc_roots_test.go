package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/gcroottest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestGCNixOSRoots: a store whose roots are those of a NixOS machine with
// Nix users (gcroottest.Layout: booted-system and current-system links
// to /run, the system profile, a user's profile and `result` links in
// home directories, links through absolute links and through ".." above
// the root, a stale auto root), collected from another root as the node
// agent collects /host (CollectNodeGarbage). Nothing they keep is
// deleted, no link is removed, and what we delete is exactly what
// `nix-store --gc --print-dead` finds when Nix runs with the root as its
// "/" (nixtest.RunAtRoot), as the node's own Nix would.
//
// (Nix with a chroot store, --store local?root=, looks the targets of
// indirect roots up on this machine, not in the root: it would find
// none of these, delete every path they keep and remove the auto roots.
// It is not the machine's Nix, so it is not what we compare with.)
func TestGCNixOSRoots(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	f := newGCFixture(t)
	add := func(name string, refs ...storepath.Path) storepath.Path {
		return f.add(name, refs, false, "", time.Time{})
	}
	glibc := add("glibc")
	var kept []storepath.Path
	keep := func(name string) string {
		p := add(name, glibc)
		kept = append(kept, p)
		return p.Absolute()
	}
	paths := gcroottest.Paths{
		Booted: keep("nixos-system-booted"), Current: keep("nixos-system-current"),
		System: keep("nixos-system-2"), User: keep("user-env"), Result: keep("result"),
		ViaAbsLink: keep("via-abs-link"), ViaDotDot: keep("via-dotdot"), ViaLinkDotDot: keep("via-link-dotdot"),
	}
	links := gcroottest.Layout(t, f.root, paths)
	dead := []storepath.Path{add("old-system", glibc), add("old-result"), add("unused")}
	if err := f.s.Close(); err != nil {
		t.Fatal(err)
	}
	gs := openStore(t, f.root)
	wantDead := slices.Sorted(slices.Values(absAll(dead)))

	dry, err := gs.CollectNodeGarbage(ctx, GCOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedDead(dry.GC); !slices.Equal(got, wantDead) {
		t.Errorf("our dry run:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantDead, "\n"))
	}
	theirs := lines(nixtest.RunAtRoot(t, f.root, "nix-store", "--gc", "--print-dead"))
	if !slices.Equal(theirs, sortedDead(dry.GC)) {
		t.Errorf("nix-store --gc --print-dead with the root as /:\n%s\nours:\n%s", strings.Join(theirs, "\n"), strings.Join(sortedDead(dry.GC), "\n"))
	}
	// Nix removed the stale auto root; put it back for our collection.
	stale := links[len(links)-1]
	if _, err := os.Lstat(stale); os.IsNotExist(err) {
		if err := os.Symlink("/home/u/old/result", stale); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Errorf("Nix did not remove the stale auto root %s: %v", stale, err)
	}

	res, err := gs.CollectNodeGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedDead(res.GC); !slices.Equal(got, wantDead) {
		t.Errorf("collection deleted:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantDead, "\n"))
	}
	assertValid(t, gs, append(kept, glibc)...)
	assertGone(t, gs, dead...)
	for _, l := range links {
		if _, err := os.Lstat(l); err != nil {
			t.Errorf("link %s: %v", l, err)
		}
	}
	if left := lines(nixtest.RunAtRoot(t, f.root, "nix-store", "--gc", "--print-dead")); len(left) != 0 {
		t.Errorf("after our collection Nix finds garbage:\n%s", strings.Join(left, "\n"))
	}
	nixtest.Verify(t, f.root)
}

// TestGCUnresolvedRoots: indirect roots that cannot be resolved (a
// target in a top-level directory the root lacks, a loop of links) may
// keep any path, so the collection keeps every valid path, removes no
// link, still deletes what no root can keep (an unregistered tree), and
// says why with ErrUnresolvedRoots; the node's collection still sweeps
// and prunes. A target outside the root on this machine is never read:
// a link there that would keep a path does not.
func TestGCUnresolvedRoots(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t)
	rooted := f.add("rooted", nil, false, "", time.Time{})
	if err := f.s.AddGCRoot(ctx, "rooted", rooted); err != nil {
		t.Fatal(err)
	}
	unrooted := f.add("unrooted", nil, false, "", time.Time{})
	unregistered := fakePath(t, "unregistered")
	writeTree(t, f.s.RealPath(unregistered), []treeEntry{{name: "x", content: "x"}})
	links := gcroottest.Unresolvable(t, f.root)
	// On this machine, outside the root, a link to unrooted: an auto root
	// naming it must not be followed there.
	outside := t.TempDir()
	if err := os.Symlink(unrooted.Absolute(), filepath.Join(outside, "result")); err != nil {
		t.Fatal(err)
	}
	escaping := filepath.Join(f.s.StateDir(), "gcroots", "auto", "8b1ncfj9ls0kmhpq5lqdxwhx0c3lpfws")
	if err := os.Symlink(filepath.Join(outside, "result"), escaping); err != nil {
		t.Fatal(err)
	}
	links = append(links, escaping)
	f.s.Close()
	gs := openStore(t, f.root)

	for _, dry := range []bool{true, false} {
		res, err := gs.CollectNodeGarbage(ctx, GCOptions{DryRun: dry})
		if !errors.Is(err, ErrUnresolvedRoots) {
			t.Fatalf("dry run %v: error %v, want ErrUnresolvedRoots", dry, err)
		}
		t.Logf("dry run %v: %v", dry, err)
		if res.GC == nil || !slices.Equal(res.GC.Dead, []string{unregistered.Absolute()}) || res.GC.Valid != 0 {
			t.Errorf("dry run %v: dead %v", dry, res.GC.Dead)
		}
		var got []string
		for _, u := range res.GC.Unresolved {
			got = append(got, u.Link)
		}
		slices.Sort(got)
		slices.Sort(links)
		if !slices.Equal(got, links) {
			t.Errorf("unresolved %v, want %v", res.GC.Unresolved, links)
		}
		for _, u := range res.GC.Unresolved {
			switch {
			case u.Link == escaping && !errors.Is(u.Err, errNotVisible):
				t.Errorf("%v: want errNotVisible (the root has no %s)", u, strings.Split(outside, "/")[1])
			case strings.HasSuffix(u.Target, "/loop/a/result") && !errors.Is(u.Err, unix.ELOOP):
				t.Errorf("%v: want ELOOP", u)
			}
		}
	}
	assertValid(t, gs, rooted, unrooted)
	assertGone(t, gs, unregistered)
	for _, l := range links {
		if _, err := os.Lstat(l); err != nil {
			t.Errorf("link %s: %v", l, err)
		}
	}

	// Once the root has that directory, the target is certainly missing
	// there: the link keeps nothing, and the path it names on this
	// machine goes with the other links gone.
	top := strings.Split(outside, "/")[1]
	if err := os.Mkdir(filepath.Join(f.root, top), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l != escaping {
			os.Remove(l)
		}
	}
	res, err := gs.CollectGarbage(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Dead, []string{unrooted.Absolute()}) {
		t.Errorf("dead %v, want %s", res.Dead, unrooted)
	}
	if _, err := os.Lstat(escaping); err != nil {
		t.Errorf("stale link removed: %v", err)
	}
}

// TestInRootResolver looks paths up inside a root: links are followed
// relative to it, ".." stops at it, and what cannot be told is an error.
func TestInRootResolver(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	mk := func(at, target string) {
		t.Helper()
		at = filepath.Join(root, at)
		if err := os.MkdirAll(filepath.Dir(at), 0o755); err != nil {
			t.Fatal(err)
		}
		if target == "" {
			if err := os.WriteFile(at, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		if err := os.Symlink(target, at); err != nil {
			t.Fatal(err)
		}
	}
	mk("home/u/result", "/nix/store/x-result")
	mk("home/u/file", "")
	mk("home/u/abs", "/srv/d")
	mk("srv/d/result", "/nix/store/x-srv")
	mk("home/u/up", "../../../../../srv/d")
	mk("home/u/out", outside)
	if err := os.Symlink("/nix/store/x-outside", filepath.Join(outside, "result")); err != nil {
		t.Fatal(err)
	}
	mk("home/u/loop", "loop")
	mk("home/u/dots", "./../u/./result")
	top := strings.Split(outside, "/")[1]

	r := inRootResolver{root: root, partial: true}
	for _, c := range []struct {
		path string
		kind lookupKind
		text string
		err  error
	}{
		{"/home/u/result", foundLink, "/nix/store/x-result", nil},
		{"/home/u/abs/result", foundLink, "/nix/store/x-srv", nil},
		{"/home/u/up/result", foundLink, "/nix/store/x-srv", nil},
		{"/home/u/dots", foundLink, "./../u/./result", nil}, // the last link is read, not followed
		{"/home/u/abs", foundLink, "/srv/d", nil},
		{"/home/u/up/..", foundOther, "", nil}, // /srv
		{"/home/u", foundOther, "", nil},
		{"/", foundOther, "", nil},
		{"/home/u/file", foundOther, "", nil},
		{"/home/u/missing", foundNothing, "", nil},
		{"/home/u/missing/result", foundNothing, "", nil},
		{"/home/u/file/result", foundNothing, "", nil},
		{"/home/u/out/result", 0, "", errNotVisible}, // outside: /<top> under the root
		{"/opt/result", 0, "", errNotVisible},
		{"/home/u/loop/result", 0, "", unix.ELOOP},
	} {
		kind, text, err := r.lstat(c.path)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: %v, %q, %v; want error %v", c.path, kind, text, err, c.err)
			}
			continue
		}
		if err != nil || kind != c.kind || text != c.text {
			t.Errorf("%s: %v, %q, %v; want %v, %q", c.path, kind, text, err, c.kind, c.text)
		}
	}
	// With the directory there, the target is certainly absent from it.
	if err := os.Mkdir(filepath.Join(root, top), 0o755); err != nil {
		t.Fatal(err)
	}
	if kind, _, err := r.lstat("/home/u/out/result"); err != nil || kind != foundNothing {
		t.Errorf("outside with /%s in the root: %v, %v; want nothing", top, kind, err)
	}
	// Under "/" nothing is partial: what is absent is absent.
	if kind, _, err := (&inRootResolver{root: "/"}).lstat("/nonexistent-storepkg-test/x"); err != nil || kind != foundNothing {
		t.Errorf("under /: %v, %v; want nothing", kind, err)
	}
}

// TestInRootResolverUnreadable: a directory on the way that cannot be
// searched makes the lookup fail (EACCES), so the root is unresolved.
// The lookup runs on a thread without the capabilities that let root
// read every directory.
func TestInRootResolverUnreadable(t *testing.T) {
	root := t.TempDir()
	private := filepath.Join(root, "home", "u", "private")
	if err := os.MkdirAll(private, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nix/store/x-result", filepath.Join(private, "result")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(private, 0o755) })
	withoutDAC(t, func() {
		_, _, err := (&inRootResolver{root: root, partial: true}).lstat("/home/u/private/result")
		if !errors.Is(err, unix.EACCES) {
			t.Errorf("lookup through an unreadable directory: %v, want EACCES", err)
		}
	})
}

// withoutDAC runs f on an OS thread whose effective capabilities lack
// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capabilities are per
// thread). The thread is never unlocked, so it exits with f.
func withoutDAC(t *testing.T, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			t.Errorf("capget: %v", err)
			return
		}
		data[0].Effective &^= 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_DAC_READ_SEARCH
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			t.Errorf("capset: %v", err)
			return
		}
		f()
	}()
	<-done
}
