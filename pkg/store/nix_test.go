package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/nixbase32"
	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// install runs the whole install protocol for a hand-made tree and
// returns the PathInfo a cache would have given (hash and size from real
// Nix's NAR serialisation).
func install(t *testing.T, s *Store, p storepath.Path, entries []treeEntry) PathInfo {
	t.Helper()
	ctx := context.Background()
	if err := s.AddTempRoots(ctx, p); err != nil {
		t.Fatal(err)
	}
	l, ok, err := s.LockPath(ctx, p, true)
	if err != nil || !ok {
		t.Fatalf("LockPath(%s) = %v, %v", p, ok, err)
	}
	defer l.Unlock()
	tmp, err := s.PrepareInstall(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, tmp, entries)
	h, n := narOf(t, tmp)
	if err := s.CommitInstall(tmp, p); err != nil {
		t.Fatal(err)
	}
	return PathInfo{Path: p, NarHash: h, NarSize: n}
}

// TestNixInterop installs and registers a few paths (a reference chain
// with a self-reference) and checks that real Nix reads them exactly as
// we do, verifies their contents, and garbage-collects them by our roots.
func TestNixInterop(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)

	c := fakePath(t, "libc-1.0")
	b := fakePath(t, "libb-2.0")
	a := fakePath(t, "app-3.0")
	drv := fakePath(t, "app-3.0.drv")

	ci := install(t, s, c, []treeEntry{{content: "just a file\n"}})
	ci.CA = "fixed:r:sha256:" + nixbase32.EncodeToString(ci.NarHash[:])
	bi := install(t, s, b, []treeEntry{
		{name: "bin/b", content: "#!/bin/sh\nexec " + c.Absolute() + " " + b.Absolute() + "\n", exec: true},
		{name: "lib/empty", content: ""},
	})
	bi.References = []storepath.Path{c, b}
	ai := install(t, s, a, []treeEntry{{name: "share/app/conf", content: "uses " + b.Absolute() + "/bin/b\n"}})
	ai.References = []storepath.Path{b}
	ai.Deriver = drv.Base()
	ai.Sigs = []string{"cache.example.org-1:c2lnbmF0dXJl", "another-key:eHl6"}
	ai.RegistrationTime = time.Unix(1700000000, 0)

	// Referrers first: Register must order them itself.
	if err := s.Register(ctx, []PathInfo{ai, bi, ci}); err != nil {
		t.Fatal(err)
	}

	// Nix's own check of everything it knows: existence and NAR hashes.
	nixtest.Verify(t, root)

	// Closure, references, hash, size, deriver as real Nix reads them.
	closure, err := s.Closure(ctx, []storepath.Path{a})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := lines(nixStore(t, root, "-qR", a.Absolute())), absAll(closure); !slices.Equal(got, want) {
		t.Errorf("nix-store -qR = %q, Closure = %q", got, want)
	}
	if want := lines(strings.Join(absAll([]storepath.Path{a, b, c}), "\n")); !slices.Equal(absAll(closure), want) {
		t.Errorf("Closure = %q, want %q", absAll(closure), want)
	}
	if got, want := lines(nixStore(t, root, "-q", "--references", b.Absolute())), lines(b.Absolute()+"\n"+c.Absolute()); !slices.Equal(got, want) {
		t.Errorf("references of b = %q, want %q", got, want)
	}
	if got, want := strings.TrimSpace(nixStore(t, root, "-q", "--hash", c.Absolute())), "sha256:"+nixbase32.EncodeToString(ci.NarHash[:]); got != want {
		t.Errorf("nix-store -q --hash = %q, want %q", got, want)
	}
	if got, want := strings.TrimSpace(nixStore(t, root, "-q", "--size", b.Absolute())), strconv.FormatUint(bi.NarSize, 10); got != want {
		t.Errorf("nix-store -q --size = %q, want %q", got, want)
	}
	if got, want := strings.TrimSpace(nixStore(t, root, "-q", "--deriver", a.Absolute())), drv.Absolute(); got != want {
		t.Errorf("nix-store -q --deriver = %q, want %q", got, want)
	}
	if got := strings.TrimSpace(nixStore(t, root, "-q", "--deriver", c.Absolute())); got != "unknown-deriver" {
		t.Errorf("nix-store -q --deriver (none) = %q", got)
	}

	// Signatures, CA and registration time through nix path-info.
	cmd := nixtest.Cmd("nix", "--store", nixtest.StoreURI(root), "path-info", "--json", a.Absolute(), c.Absolute())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix path-info: %v", err)
	}
	var infos []struct {
		Path             string   `json:"path"`
		NarSize          uint64   `json:"narSize"`
		Signatures       []string `json:"signatures"`
		CA               string   `json:"ca"`
		RegistrationTime int64    `json:"registrationTime"`
		Deriver          string   `json:"deriver"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatalf("nix path-info output %s: %v", out, err)
	}
	for _, in := range infos {
		switch in.Path {
		case a.Absolute():
			want := slices.Sorted(slices.Values(ai.Sigs))
			if !slices.Equal(in.Signatures, want) || in.RegistrationTime != 1700000000 || in.NarSize != ai.NarSize || in.Deriver != drv.Absolute() {
				t.Errorf("nix path-info %s = %+v", a, in)
			}
		case c.Absolute():
			if in.CA != ci.CA || len(in.Signatures) != 0 {
				t.Errorf("nix path-info %s = %+v, want ca %q", c, in, ci.CA)
			}
		default:
			t.Errorf("unexpected path-info %+v", in)
		}
	}

	// Our own reading of what we wrote.
	got, err := s.QueryPathInfo(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got.NarHash != ai.NarHash || got.NarSize != ai.NarSize || got.Deriver != ai.Deriver || got.CA != "" ||
		!slices.Equal(got.References, []storepath.Path{b}) || !got.RegistrationTime.Equal(ai.RegistrationTime) ||
		!slices.Equal(got.Sigs, slices.Sorted(slices.Values(ai.Sigs))) {
		t.Errorf("QueryPathInfo(a) = %+v\nwant %+v", got, ai)
	}
	if got, err := s.QueryPathInfo(ctx, b); err != nil || !slices.Equal(got.References, slices.Sorted(slices.Values([]storepath.Path{b, c}))) {
		t.Errorf("QueryPathInfo(b) = %+v, %v", got, err)
	}

	// Roots: ours (symlink) and our temporary ones, as Nix's GC sees them.
	if err := s.AddGCRoot(ctx, "ctr-1", a); err != nil {
		t.Fatal(err)
	}
	if err := s.AddGCRoot(ctx, "ctr-1", a); err != nil { // idempotent
		t.Fatal(err)
	}
	rootsOut := nixStore(t, root, "--gc", "--print-roots")
	if !strings.Contains(rootsOut, s.GCRootPath("ctr-1")+" -> "+a.Absolute()) {
		t.Errorf("--print-roots lacks our root:\n%s", rootsOut)
	}
	if !strings.Contains(rootsOut, fmt.Sprintf("{temp:%d} -> %s", os.Getpid(), c.Absolute())) {
		t.Errorf("--print-roots lacks our temporary root:\n%s", rootsOut)
	}
	nixStore(t, root, "--gc")
	if v, _ := s.ValidSubset(ctx, []storepath.Path{a, b, c}); !v[a] || !v[b] || !v[c] {
		t.Fatalf("GC removed rooted paths: %v", v)
	}
	nixtest.Verify(t, root)

	// Without any root, Nix's GC deletes and invalidates them, and we
	// see that.
	if err := s.RemoveGCRoot("ctr-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveGCRoot("ctr-1"); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // drops the temporary roots
		t.Fatal(err)
	}
	if _, err := os.Stat(s.TempRootsFile()); !os.IsNotExist(err) {
		t.Errorf("temporary roots file survives Close: %v", err)
	}
	nixStore(t, root, "--gc")
	s2 := openStore(t, root)
	if v, err := s2.ValidSubset(ctx, []storepath.Path{a, b, c}); err != nil || v[a] || v[b] || v[c] {
		t.Fatalf("after GC ValidSubset = %v, %v", v, err)
	}
	for _, p := range []storepath.Path{a, b, c} {
		if _, err := os.Lstat(s2.RealPath(p)); !os.IsNotExist(err) {
			t.Errorf("%s still on disk after GC: %v", p, err)
		}
	}
}

// TestSchemaMatchesNix compares the schema we create with the one real
// Nix creates for a new store.
func TestSchemaMatchesNix(t *testing.T) {
	needNix(t)
	ours := t.TempDir()
	openStore(t, ours).Close()
	theirs := t.TempDir()
	nixStore(t, theirs, "--init")

	dump := func(root string) (string, string) {
		db, err := sql.Open("sqlite", filepath.Join(root, "nix/var/nix/db/db.sqlite"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rows, err := db.Query(`select type, name, tbl_name, coalesce(sql, '') from sqlite_master order by type, name`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var sb strings.Builder
		for rows.Next() {
			var typ, name, tbl, text string
			if err := rows.Scan(&typ, &name, &tbl, &text); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&sb, "%s %s %s\n%s\n", typ, name, tbl, text)
		}
		var mode string
		if err := db.QueryRow(`pragma journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		return sb.String(), mode
	}
	o, om := dump(ours)
	n, nm := dump(theirs)
	if o != n {
		t.Errorf("sqlite_master differs.\nours:\n%s\nNix's:\n%s", o, n)
	}
	if om != "wal" || nm != "wal" {
		t.Errorf("journal modes: ours %q, Nix's %q; want wal", om, nm)
	}
	for _, root := range []string{ours, theirs} {
		if b, err := os.ReadFile(filepath.Join(root, "nix/var/nix/db/schema")); err != nil || string(b) != "10" {
			t.Errorf("%s schema file = %q, %v", root, b, err)
		}
	}
	// And Nix is happy to open ours.
	nixStore(t, ours, "--verify")
}

// TestDerivationOutputs registers a .drv and its output; Nix's collector
// uses DerivationOutputs for keep-outputs.
func TestDerivationOutputs(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	out := fakePath(t, "thing-1")
	drv := fakePath(t, "thing-1.drv")
	oi := install(t, s, out, []treeEntry{{content: "output\n"}})
	oi.Deriver = drv.Base()
	text := `Derive([("out","` + out.Absolute() + `","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo \"hi\\n\""],[("out","` + out.Absolute() + `")])`
	di := install(t, s, drv, []treeEntry{{content: text}})
	if err := s.Register(ctx, []PathInfo{oi, di}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.db.QueryRow(`select count(*) from DerivationOutputs d join ValidPaths v on v.id = d.drv
		where v.path = ? and d.id = 'out' and d.path = ?`, drv.Absolute(), out.Absolute()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("DerivationOutputs rows = %d, %v", n, err)
	}
	if err := s.AddGCRoot(ctx, "drv", drv); err != nil {
		t.Fatal(err)
	}
	s.Close() // no temporary roots: only the drv root counts
	dead := nixStore(t, root, "--gc", "--print-dead", "--option", "keep-outputs", "true")
	if strings.Contains(dead, out.Absolute()) {
		t.Errorf("with keep-outputs the output of a rooted .drv is dead:\n%s", dead)
	}
	dead = nixStore(t, root, "--gc", "--print-dead", "--option", "keep-outputs", "false")
	if !strings.Contains(dead, out.Absolute()) {
		t.Errorf("without keep-outputs the output should be dead:\n%s", dead)
	}
	nixStore(t, root, "--verify", "--check-contents")
}

// TestGCSocketProtocol runs a real Nix collector, holds it (Nix's own
// _NIX_TEST_GC_SYNC hook) after it has read the roots, and adds a
// temporary root meanwhile: it must reach the collector through its
// socket and protect the matching temporary unpack directory, while an
// unprotected leftover is removed.
func TestGCSocketProtocol(t *testing.T) {
	needNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := t.TempDir()
	s := openStore(t, root)

	protected := fakePath(t, "protected-1")
	unprotected := fakePath(t, "unprotected-1")
	for _, p := range []storepath.Path{protected, unprotected} {
		writeTree(t, s.TempPath(p), []treeEntry{{name: "f", content: "partial unpack"}})
	}

	fifo := filepath.Join(t.TempDir(), "gc-sync")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	gc := nixCmd(ctx, root, []string{"_NIX_TEST_GC_SYNC=" + fifo}, "--gc")
	var gcOut strings.Builder
	gc.Stdout, gc.Stderr = &gcOut, &gcOut
	if err := gc.Start(); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(s.StateDir(), "gc-socket", "socket")
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("collector never opened its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The collector holds gc.lock now, so this goes through the socket.
	f, err := storefs.OpenLockFile(filepath.Join(s.StateDir(), "gc.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := storefs.TryLock(f, storefs.Shared); ok {
		t.Fatal("gc.lock is not held by the collector")
	}
	f.Close()
	if err := s.AddTempRoots(ctx, protected); err != nil {
		t.Fatal(err)
	}
	// Let the collector go on; it reads the whole fifo.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("go"))
	w.Close()
	if err := gc.Wait(); err != nil {
		t.Fatalf("nix-store --gc: %v\n%s", err, gcOut.String())
	}
	t.Logf("nix-store --gc:\n%s", gcOut.String())
	if _, err := os.Stat(s.TempPath(protected)); err != nil {
		t.Errorf("collector removed the protected unpack directory: %v", err)
	}
	if _, err := os.Lstat(s.TempPath(unprotected)); !os.IsNotExist(err) {
		t.Errorf("collector kept the unprotected leftover: %v", err)
	}
	b, err := os.ReadFile(s.TempRootsFile())
	if err != nil || string(b) != protected.Absolute()+"\x00" {
		t.Errorf("temporary roots file = %q, %v", b, err)
	}
}

// TestRegisterMany registers 3,000 synthetic paths in one transaction and
// queries them; real Nix's -qR must agree with Closure.
func TestRegisterMany(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	const n = 3000
	paths := make([]storepath.Path, n)
	infos := make([]PathInfo, n)
	for i := range paths {
		paths[i] = fakePath(t, fmt.Sprintf("pkg-%d", i))
		infos[i] = PathInfo{Path: paths[i], NarSize: uint64(100 + i)}
		infos[i].NarHash[0], infos[i].NarHash[1] = byte(i), byte(i>>8)
		infos[i].NarHash[31] = 1
		// A DAG: each path refers to up to three earlier ones, and some
		// to themselves.
		for _, d := range []int{1, 7, 31} {
			if i-d >= 0 && (d == 1 || i%d%2 == 0) {
				infos[i].References = append(infos[i].References, paths[i-d])
			}
		}
		if i%10 == 0 {
			infos[i].References = append(infos[i].References, paths[i])
		}
	}
	// Referrers first, to exercise the ordering.
	slices.Reverse(infos)
	start := time.Now()
	if err := s.Register(ctx, infos); err != nil {
		t.Fatal(err)
	}
	t.Logf("Register(%d paths) took %v", n, time.Since(start))
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Register of %d paths took %v", n, d)
	}
	// Registering again is a no-op.
	if err := s.Register(ctx, infos[:10]); err != nil {
		t.Fatal(err)
	}

	query := append(slices.Clone(paths), fakePath(t, "missing-a"), fakePath(t, "missing-b"))
	start = time.Now()
	valid, err := s.ValidSubset(ctx, query)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ValidSubset(%d paths) took %v", len(query), time.Since(start))
	for i, p := range query {
		if valid[p] != (i < n) {
			t.Fatalf("ValidSubset[%s] = %v", p, valid[p])
		}
	}

	// Closure of the last path, checked against a Go computation.
	top := paths[n-1]
	refs := map[storepath.Path][]storepath.Path{}
	for _, in := range infos {
		refs[in.Path] = in.References
	}
	seen := map[storepath.Path]bool{}
	var walk func(p storepath.Path)
	walk = func(p storepath.Path) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, r := range refs[p] {
			walk(r)
		}
	}
	walk(top)
	walk(paths[0])
	want := slices.Sorted(func(yield func(storepath.Path) bool) {
		for p := range seen {
			if !yield(p) {
				return
			}
		}
	})
	start = time.Now()
	got, err := s.Closure(ctx, []storepath.Path{top, paths[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Closure (%d paths) took %v", len(got), time.Since(start))
	if !slices.Equal(got, want) {
		t.Fatalf("Closure has %d paths, want %d", len(got), len(want))
	}
	if _, err := s.Closure(ctx, []storepath.Path{top, query[n]}); !errors.Is(err, ErrNotValid) || !strings.Contains(err.Error(), query[n].Absolute()) {
		t.Errorf("Closure with an invalid root: %v", err)
	}

	info, err := s.QueryPathInfo(ctx, paths[10])
	if err != nil || len(info.References) != 2 || info.NarSize != 110 { // paths[9] and itself
		t.Errorf("QueryPathInfo = %+v, %v", info, err)
	}

	if _, err := exec.LookPath("nix-store"); err == nil || os.Getenv("CI") != "" {
		out := nixStore(t, root, "-qR", top.Absolute())
		if got := lines(out); !slices.Equal(got, absAll(want)) {
			t.Errorf("nix-store -qR has %d paths, Closure %d", len(got), len(want))
		}
	}
}

// TestRegisterMissingReference: nothing is written when a reference is
// neither valid nor in the batch.
func TestRegisterMissingReference(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	a, b, missing := fakePath(t, "a"), fakePath(t, "b"), fakePath(t, "missing")
	h := [32]byte{1}
	err := s.Register(ctx, []PathInfo{
		{Path: a, NarHash: h, References: []storepath.Path{b}},
		{Path: b, NarHash: h, References: []storepath.Path{missing, b}},
	})
	if !errors.Is(err, ErrNotValid) || !strings.Contains(err.Error(), b.Absolute()) || !strings.Contains(err.Error(), missing.Absolute()) {
		t.Fatalf("Register = %v; want ErrNotValid naming %s and %s", err, b, missing)
	}
	t.Log(err)
	v, err := s.ValidSubset(ctx, []storepath.Path{a, b})
	if err != nil || v[a] || v[b] {
		t.Fatalf("after failed Register: %v, %v", v, err)
	}
	var rows int
	s.db.QueryRow(`select (select count(*) from ValidPaths) + (select count(*) from Refs)`).Scan(&rows)
	if rows != 0 {
		t.Fatalf("%d rows written", rows)
	}

	// A cycle (other than a self-reference) is refused too.
	err = s.Register(ctx, []PathInfo{
		{Path: a, NarHash: h, References: []storepath.Path{b}},
		{Path: b, NarHash: h, References: []storepath.Path{a}},
	})
	if err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("Register of a cycle = %v", err)
	}
	// With the reference valid first, it works; a's reference to b is
	// satisfied from the database.
	if err := s.Register(ctx, []PathInfo{{Path: b, NarHash: h}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, []PathInfo{{Path: a, NarHash: h, References: []storepath.Path{b}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.QueryPathInfo(ctx, missing); !errors.Is(err, ErrNotValid) {
		t.Fatalf("QueryPathInfo(missing) = %v", err)
	}
}

// TestOpenRefusesOtherSchema: a store Nix has not upgraded must not be
// touched.
func TestOpenRefusesOtherSchema(t *testing.T) {
	for _, content := range []string{"9", "11", "10\n", "garbage"} {
		root := t.TempDir()
		openStore(t, root).Close()
		schema := filepath.Join(root, "nix/var/nix/db/schema")
		if err := os.WriteFile(schema, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := Open(context.Background(), root)
		if err == nil {
			s.Close()
			t.Fatalf("Open with schema %q succeeded", content)
		}
		if !errors.Is(err, ErrSchema) || !strings.Contains(err.Error(), schema) {
			t.Errorf("Open with schema %q: %v; want ErrSchema naming %s", content, err, schema)
		}
		t.Log(err)
	}
}

// TestOpenExisting reopens a store and sees its data; a second Store in
// the same process shares the temporary roots file.
func TestOpenExisting(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s1 := openStore(t, root)
	p := fakePath(t, "x")
	if err := s1.Register(ctx, []PathInfo{{Path: p, NarHash: [32]byte{9}}}); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, root)
	if v, err := s2.ValidSubset(ctx, []storepath.Path{p}); err != nil || !v[p] {
		t.Fatalf("ValidSubset in second Store = %v, %v", v, err)
	}
	if s1.Root() != root || s1.RealPath(p) != filepath.Join(root, "nix/store", p.Base()) {
		t.Errorf("Root %q RealPath %q", s1.Root(), s1.RealPath(p))
	}
}

// TestNixVerifyDetectsCorruption shows that the clean --verify results
// above mean something: Nix does hash our trees against our NarHash.
func TestNixVerifyDetectsCorruption(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	p := fakePath(t, "fragile")
	info := install(t, s, p, []treeEntry{{name: "data", content: "original"}})
	if err := s.Register(ctx, []PathInfo{info}); err != nil {
		t.Fatal(err)
	}
	nixStore(t, root, "--verify", "--check-contents")
	f := filepath.Join(s.RealPath(p), "data")
	os.Chmod(f, 0o644)
	if err := os.WriteFile(f, []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := nixCmd(ctx, root, nil, "--verify", "--check-contents").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "was modified") {
		t.Fatalf("nix-store --verify on a modified path: %v\n%s", err, out)
	}
}
