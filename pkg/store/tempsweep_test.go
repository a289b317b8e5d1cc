package store

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
)

// TestRemoveStaleTemporaries: the temporary directory of a killed fetch
// (its path's lock file left, unlocked) goes, with the lock file; one
// whose path is locked (a live fetch), one younger than the minimum age,
// one whose shortened name matches no lock file, and a valid path whose
// name merely ends like a temporary one stay. A dry run removes nothing.
func TestRemoveStaleTemporaries(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	mkTemp := func(dir string) {
		t.Helper()
		writeTree(t, dir, []treeEntry{{name: "data", content: "half a NAR"}})
	}
	killed := fakePath(t, "killed-1.0")
	mkTemp(s.TempPath(killed))
	if err := os.WriteFile(s.RealPath(killed)+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	live := fakePath(t, "live-1.0")
	mkTemp(s.TempPath(live))
	lock, ok, err := s.LockPath(ctx, live, false)
	if err != nil || !ok {
		t.Fatalf("locking %s: %v, %v", live, ok, err)
	}
	defer lock.Unlock()
	long := fakePath(t, strings.Repeat("l", 205)) // its temporary name is shortened
	mkTemp(s.TempPath(long))
	if filepath.Base(s.TempPath(long)) == long.Base()+tmpSuffix {
		t.Fatal("the long name's temporary name is not shortened")
	}
	valid := fakePath(t, "looks-like-one"+tmpSuffix)
	writeTree(t, s.RealPath(valid), []treeEntry{{name: "", content: "valid\n"}})
	hash, size := narOf(t, s.RealPath(valid))
	if err := s.Register(ctx, []PathInfo{{Path: valid, NarHash: hash, NarSize: size, RegistrationTime: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }

	res, err := s.RemoveStaleTemporaries(ctx, time.Hour, false)
	if err != nil || len(res.Removed) != 0 {
		t.Fatalf("with a minimum age of 1h: %+v, %v", res, err)
	}
	res, err = s.RemoveStaleTemporaries(ctx, 0, true)
	if err != nil || !slices.Equal(res.Removed, []string{filepath.Base(s.TempPath(killed))}) || res.BytesFreed == 0 || !exists(s.TempPath(killed)) {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	res, err = s.RemoveStaleTemporaries(ctx, 0, false)
	if err != nil || !slices.Equal(res.Removed, []string{filepath.Base(s.TempPath(killed))}) {
		t.Fatalf("removed %+v, %v; want only the killed fetch's", res, err)
	}
	if exists(s.TempPath(killed)) || exists(s.RealPath(killed)+".lock") {
		t.Error("the killed fetch's temporary directory or lock file is still there")
	}
	for _, p := range []string{s.TempPath(live), s.TempPath(long), s.RealPath(valid)} {
		if !exists(p) {
			t.Errorf("%s removed", p)
		}
	}
	if len(res.Kept) != 3 {
		t.Errorf("kept %v, want the live fetch's, the shortened one and the valid path", res.Kept)
	}

	// The shortened name is matched through its path's lock file, which
	// a killed fetch leaves.
	if err := os.WriteFile(s.RealPath(long)+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err = s.RemoveStaleTemporaries(ctx, 0, false)
	if err != nil || !slices.Equal(res.Removed, []string{filepath.Base(s.TempPath(long))}) || exists(s.TempPath(long)) {
		t.Errorf("shortened name with its lock file: %+v, %v", res, err)
	}
	if !exists(s.TempPath(live)) || !exists(s.RealPath(valid)) {
		t.Error("the live fetch's directory or the valid path went")
	}
	nixtest.Verify(t, s.root)
}
