package gcowner

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
