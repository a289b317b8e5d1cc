// Package gcroottest lays out, under a store's root, the GC roots a
// NixOS machine with Nix users has: roots that are links to links
// elsewhere on the machine (indirect roots), which a collector working
// on the machine's store from another root (the node agent's /host)
// must look up inside that root. Tests of pkg/store and cmd/storepkg
// share it.
package gcroottest

import (
	"os"
	"path/filepath"
	"testing"
)

// Paths are the store paths (/nix/store/...) kept by each kind of root.
type Paths struct {
	// Booted and Current: NixOS's gcroots/booted-system ->
	// /run/booted-system and gcroots/current-system ->
	// /run/current-system, links into the store.
	Booted, Current string
	// System: the system profile, profiles/system -> system-2-link ->
	// the path (a relative link, then a direct one).
	System string
	// User: a user's profile generation as Nix 2.14 and later record it,
	// gcroots/auto/<hash> -> /home/alice/.local/state/nix/profiles/profile-1-link.
	User string
	// Result: `nix-build` in a home directory, gcroots/auto/<hash> ->
	// /home/u/proj/result.
	Result string
	// ViaAbsLink: gcroots/auto/<hash> -> /home/u/work/result, where
	// /home/u/work -> /srv/work, an absolute link: it means <root>/srv/work.
	ViaAbsLink string
	// ViaDotDot: gcroots/auto/<hash> -> ../../../../../../../../../srv/up/result,
	// more ".." than there are directories above it: they stop at the root.
	ViaDotDot string
	// ViaLinkDotDot: gcroots/auto/<hash> -> /home/u/up/result, where
	// /home/u/up -> ../../../../../srv/up2: a link whose ".." climb
	// above the root, and stop there.
	ViaLinkDotDot string
}

// Layout makes the roots of p under root, and a stale one (an auto root
// to /home/u/old/result, which is missing). It returns every link it
// made in the state directory, for checks that none is removed.
func Layout(t testing.TB, root string, p Paths) []string {
	t.Helper()
	state := filepath.Join(root, "nix", "var", "nix")
	gcroots := filepath.Join(state, "gcroots")
	var made []string
	link := func(at, target string) {
		t.Helper()
		at = filepath.Join(root, at)
		if err := os.MkdirAll(filepath.Dir(at), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, at); err != nil {
			t.Fatal(err)
		}
		if rel, err := filepath.Rel(state, at); err == nil && rel[0] != '.' {
			made = append(made, at)
		}
	}
	mkdir := func(d string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rel := func(d string) string {
		r, err := filepath.Rel(root, filepath.Join(gcroots, d))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	link("run/booted-system", p.Booted)
	link(rel("booted-system"), "/run/booted-system")
	link("run/current-system", p.Current)
	link(rel("current-system"), "/run/current-system")

	link("nix/var/nix/profiles/system-2-link", p.System)
	link("nix/var/nix/profiles/system", "system-2-link")

	link("home/alice/.local/state/nix/profiles/profile-1-link", p.User)
	link("home/alice/.local/state/nix/profiles/profile", "profile-1-link")
	link(rel("auto/0c8xk3i8dc3wvd3ns56sqvq08h5ir9y0"), "/home/alice/.local/state/nix/profiles/profile-1-link")

	link("home/u/proj/result", p.Result)
	link(rel("auto/1b5y7nmlxs33rf6y2ilfg4a4qk4zf5kh"), "/home/u/proj/result")

	link("srv/work/result", p.ViaAbsLink)
	link("home/u/work", "/srv/work")
	link(rel("auto/2mhzb9jk4z6n3fr2qn5gwbwglbmx3lq1"), "/home/u/work/result")

	link("srv/up/result", p.ViaDotDot)
	link(rel("auto/3v1i4fsdhv5x8lkd0a3b9gnmkb2pw6sl"), "../../../../../../../../../srv/up/result")

	link("srv/up2/result", p.ViaLinkDotDot)
	link("home/u/up", "../../../../../srv/up2")
	link(rel("auto/4qbdp3hr1i9cgnc9vbzynhpk9lsn8jhl"), "/home/u/up/result")

	mkdir("home/u/old")
	link(rel("auto/5zjy7dh1d4ns8cf2g7ybm3q8cvwb0ihl"), "/home/u/old/result")
	return made
}

// Kept lists the paths of p.
func (p Paths) Kept() []string {
	return []string{p.Booted, p.Current, p.System, p.User, p.Result, p.ViaAbsLink, p.ViaDotDot, p.ViaLinkDotDot}
}

// Unresolvable makes, under root, indirect roots a collector working
// from root cannot resolve, and returns them: an auto root into /opt,
// a top-level directory root lacks (a directory the node agent does not
// mount), and one into a loop of links under /home.
func Unresolvable(t testing.TB, root string) []string {
	t.Helper()
	auto := filepath.Join(root, "nix", "var", "nix", "gcroots", "auto")
	loop := filepath.Join(root, "home", "loop")
	if _, err := os.Stat(filepath.Join(root, "opt")); err == nil {
		t.Fatalf("%s/opt exists", root)
	}
	for _, d := range []string{auto, loop} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		filepath.Join(auto, "6a0mq0ld2cgn2hv8ncvx04zl7kjd6xzv"): "/opt/app/result",
		filepath.Join(auto, "7y9wz0yrbvm9ms0w6b8q3a6yxj7c0kab"): "/home/loop/a/result",
		filepath.Join(loop, "a"):                                "b",
		filepath.Join(loop, "b"):                                "a",
	}
	var made []string
	for at, target := range links {
		if err := os.Symlink(target, at); err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(at) == auto {
			made = append(made, at)
		}
	}
	return made
}
