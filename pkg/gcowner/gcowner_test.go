package gcowner

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/storepath"
)

func TestSweep(t *testing.T) {
	root := t.TempDir()
	p1 := storepath.Path("7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	p2 := storepath.Path("0c0h8l3r3qkr2q0mh4hbhbk7bsm2jhqk-glibc-2.40")
	if err := os.MkdirAll(RootsDir(root), 0o755); err != nil {
		t.Fatal(err)
	}
	link := func(name string, p storepath.Path) {
		t.Helper()
		if err := os.Symlink(p.Absolute(), filepath.Join(RootsDir(root), name)); err != nil {
			t.Fatal(err)
		}
	}

	// A process that is gone: started, its PID noted, reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	self := procid.Self()
	dead := procid.ID{PID: cmd.Process.Pid, PIDNamespace: self.PIDNamespace}
	elsewhere := procid.ID{PID: cmd.Process.Pid, PIDNamespace: "pid:[1]"}
	for owner, w := range map[string]procid.ID{"live-pod": self, "dead-pod": dead, "other-ns-pod": elsewhere} {
		if err := Write(root, owner, w); err != nil {
			t.Fatal(err)
		}
		link(RootName(owner, p1), p1)
	}
	link(RootName("dead-pod", p2), p2)
	link("myapp", p1) // an operator's root: no owner record

	res, err := Sweep(root, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{RootName("dead-pod", p2), RootName("dead-pod", p1)}
	slices.Sort(want)
	slices.Sort(res.Roots)
	if !slices.Equal(res.Owners, []string{"dead-pod"}) || !slices.Equal(res.Roots, want) {
		t.Errorf("dry run: %+v, want owner dead-pod, roots %v", res, want)
	}
	if _, err := os.Lstat(filepath.Join(RootsDir(root), want[0])); err != nil {
		t.Errorf("dry run removed a root: %v", err)
	}

	if res, err = Sweep(root, false); err != nil || len(res.Roots) != 2 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
	entries, _ := os.ReadDir(RootsDir(root))
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	wantLeft := []string{RootName("live-pod", p1), RootName("other-ns-pod", p1), "myapp"}
	slices.Sort(wantLeft)
	if !slices.Equal(left, wantLeft) {
		t.Errorf("roots left %v, want %v", left, wantLeft)
	}
	if _, err := os.Stat(filepath.Join(ownersDir(root), "dead-pod.json")); !os.IsNotExist(err) {
		t.Errorf("the gone owner's record is still there: %v", err)
	}
	if res, err = Sweep(root, false); err != nil || len(res.Owners) != 0 {
		t.Errorf("second sweep: %+v, %v", res, err)
	}
}

func TestOwnerOf(t *testing.T) {
	p := storepath.Path("7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	for name, want := range map[string]string{
		RootName("abc", p):         "abc",
		RootName("with-dashes", p): "with-dashes",
		"myapp":                    "",
		"x-" + "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee": "", // 'e' is not nixbase32
	} {
		got, ok := ownerOf(name)
		if got != want || ok != (want != "") {
			t.Errorf("ownerOf(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

// TestSweepSkipsInvalidRecords: an owner record that cannot be read
// (empty, cut short, not JSON, naming no process) says nothing about its
// owner, so its roots are kept; it is reported, and the records of other
// owners are swept as usual.
func TestSweepSkipsInvalidRecords(t *testing.T) {
	root := t.TempDir()
	p := storepath.Path("7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	if err := os.MkdirAll(RootsDir(root), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if err := Write(root, "dead-pod", procid.ID{PID: cmd.Process.Pid, PIDNamespace: procid.Self().PIDNamespace}); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{"empty": "", "cut": `{"pid":12`, "junk": "\x00\x00\x00", "nobody": `{}`, "null": "null"}
	owners := []string{"dead-pod"}
	for owner, content := range bad {
		if err := os.WriteFile(filepath.Join(ownersDir(root), owner+".json"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		owners = append(owners, owner)
	}
	for _, owner := range owners {
		if err := os.Symlink(p.Absolute(), filepath.Join(RootsDir(root), RootName(owner, p))); err != nil {
			t.Fatal(err)
		}
	}

	res, err := Sweep(root, false)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if !slices.Equal(res.Owners, []string{"dead-pod"}) || !slices.Equal(res.Roots, []string{RootName("dead-pod", p)}) {
		t.Errorf("swept %v, %v; want dead-pod's root", res.Owners, res.Roots)
	}
	var invalid []string
	for _, r := range res.Invalid {
		invalid = append(invalid, r.Owner)
		if r.Err == nil {
			t.Errorf("%s: no reason", r.Owner)
		}
	}
	slices.Sort(invalid)
	if want := slices.Sorted(maps.Keys(bad)); !slices.Equal(invalid, want) {
		t.Errorf("invalid records %v, want %v", invalid, want)
	}
	for owner := range bad {
		if _, err := os.Lstat(filepath.Join(RootsDir(root), RootName(owner, p))); err != nil {
			t.Errorf("the root of %s, whose record is invalid: %v", owner, err)
		}
		if _, err := os.Stat(filepath.Join(ownersDir(root), owner+".json")); err != nil {
			t.Errorf("the invalid record %s: %v", owner, err)
		}
	}
}

// TestWriteDurably: a record is written to a temporary file, fsynced,
// renamed into place and its directory fsynced (and so is the parent of
// each directory Write creates); a write that fails leaves the record
// as it was and no temporary file.
func TestWriteDurably(t *testing.T) {
	root := t.TempDir()
	var synced []string
	fsync = func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		name := f.Name()
		if !fi.IsDir() {
			// What the file holds when it is synced, under its name then.
			b, _ := os.ReadFile(name)
			name = filepath.Base(name) + "=" + string(b)
		}
		synced = append(synced, name)
		return f.Sync()
	}
	t.Cleanup(func() { fsync = (*os.File).Sync })

	first := procid.ID{PID: 42, PIDNamespace: "pid:[1]", StartTicks: 7}
	if err := Write(root, "pod", first); err != nil {
		t.Fatal(err)
	}
	dir := ownersDir(root)
	if len(synced) < 3 {
		t.Fatalf("synced %v", synced)
	}
	file, last := synced[len(synced)-2], synced[len(synced)-1]
	if !strings.HasPrefix(file, ".pod.json.tmp-") || !strings.HasSuffix(file, `={"pid":42,"pidNamespace":"pid:[1]","startTicks":7}`) || last != dir {
		t.Errorf("synced %v: want the complete temporary file, then %s", synced, dir)
	}
	for _, d := range []string{filepath.Dir(dir), filepath.Dir(filepath.Dir(dir))} {
		if !slices.Contains(synced, d) {
			t.Errorf("%s, where Write created a directory, not synced: %v", d, synced)
		}
	}
	read := func() procid.ID {
		t.Helper()
		var w procid.ID
		b, err := os.ReadFile(filepath.Join(dir, "pod.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &w); err != nil {
			t.Fatal(err)
		}
		return w
	}
	if got := read(); got != first {
		t.Errorf("record %+v, want %+v", got, first)
	}

	// A failing fsync: Write fails, the record stays as it was.
	fsync = func(*os.File) error { return syscall.EIO }
	if err := Write(root, "pod", procid.ID{PID: 43}); !errors.Is(err, syscall.EIO) {
		t.Errorf("write with a failing fsync: %v", err)
	}
	if got := read(); got != first {
		t.Errorf("record after a failed write %+v, want %+v", got, first)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("left in %s: %v", dir, entries)
	}
}

// TestWriteFails: a record that cannot be written is an error, for the
// shim to make no roots (the owners directory here is a file).
func TestWriteFails(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Dir(ownersDir(root)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ownersDir(root), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(root, "pod", procid.Self()); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("Write: %v, want ENOTDIR", err)
	}
}
