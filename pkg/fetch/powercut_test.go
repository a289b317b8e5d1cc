package fetch_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/powercut"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// powerCutDisk is a fresh ext4 disk holding an empty store, made durable
// before the test cuts power: a node's store exists long before a fetch.
func powerCutDisk(t *testing.T) *powercut.Disk {
	t.Helper()
	disk := powercut.New(t, 64<<20)
	st, err := store.Open(context.Background(), disk.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	disk.Sync(t)
	return disk
}

// invalidPaths returns those of paths real Nix does not consider valid in
// the store under root.
func invalidPaths(t *testing.T, root string, paths []string) []string {
	t.Helper()
	args := append([]string{"--store", nixtest.StoreURI(root), "--check-validity", "--print-invalid"}, paths...)
	return strings.Fields(nixtest.Run(t, "nix-store", args...))
}

// TestPowerCutAfterFetch: power is cut the instant a fetch returns. Every
// path the database registers as valid on the disk that survives must be
// complete: real Nix checks every file's contents against the registered
// NAR hash. (ext4 keeps file data in the page cache for about 30 s; a
// registration made durable before that data is what the store's syncs
// prevent.)
func TestPowerCutAfterFetch(t *testing.T) {
	fx, key, caches := fixture(t)
	disk := powerCutDisk(t)
	opts := fetch.Options{
		Substituters: []string{"file://" + caches["zstd"]},
		TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
	}
	if _, err := fetchInto(t, disk.Dir, opts, fx.Root); err != nil {
		t.Fatal(err)
	}
	after := disk.Cut(t)

	invalid := invalidPaths(t, after, fx.Closure)
	t.Logf("after the power cut: %d of %d paths valid", len(fx.Closure)-len(invalid), len(fx.Closure))
	if len(invalid) == len(fx.Closure) {
		// Closing the store checkpoints SQLite's log, which syncs it: the
		// registrations should have survived, or this test shows nothing.
		t.Fatalf("no registration survived the power cut; the test needs some to check")
	}
	nixtest.Verify(t, after)
}

// TestPowerCutDuringFetch: power is cut right after a fetch registers its
// first paths, while other paths are still unpacking. On the disk that
// survives, what is registered is complete, and the next fetch treats what
// the cut left half-done – trees renamed into place whose registration
// was lost (SQLite's synchronous=NORMAL does not sync a commit), trees
// still under their temporary name – as invalid: it replaces them, and
// the store ends complete, with no leftover.
func TestPowerCutDuringFetch(t *testing.T) {
	fx, key, caches := fixture(t)
	disk := powerCutDisk(t)
	cutNow, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	opts := fetch.Options{
		Substituters: []string{"file://" + caches["zstd"]},
		TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
		Progress: func(p fetchapi.Progress) {
			if p.PathsFetched > 0 {
				// Called by the registrar once the first batch is
				// registered: hold it while the power is cut.
				once.Do(func() { close(cutNow); <-resume })
			}
		},
	}
	fetched := make(chan error, 1)
	go func() { fetched <- fetchNoFatal(disk.Dir, opts, fx.Root) }()
	var after string
	select {
	case <-cutNow:
		after = disk.Cut(t)
		close(resume)
	case err := <-fetched:
		t.Fatalf("the fetch ended (%v) before registering anything", err)
	}
	if err := <-fetched; err != nil {
		t.Fatalf("the fetch the power cut interrupted (on the original disk): %v", err)
	}

	invalid := invalidPaths(t, after, fx.Closure)
	var tmp, unregistered int
	for _, name := range nixtest.StoreEntries(t, after) {
		switch {
		case strings.HasSuffix(name, ".storepkg-tmp"):
			tmp++
		case !strings.HasPrefix(name, ".") && containsBase(invalid, name):
			unregistered++
		}
	}
	t.Logf("after the power cut: %d of %d paths valid; %d trees in place but not registered, %d temporary trees",
		len(fx.Closure)-len(invalid), len(fx.Closure), unregistered, tmp)
	nixtest.Verify(t, after)
	if unregistered+tmp == 0 {
		t.Fatalf("the power cut left nothing half-done; the test needs something to recover from")
	}

	res, err := fetchInto(t, after, opts2(opts), fx.Root)
	if err != nil {
		t.Fatalf("fetching again after the power cut: %v", err)
	}
	if len(res.Fetched) != len(invalid) {
		t.Errorf("the fetch after the power cut fetched %d paths, %d were invalid", len(res.Fetched), len(invalid))
	}
	nixtest.Verify(t, after)
	if got := nixtest.QueryClosure(t, after, fx.Root); !equalStrings(got, fx.Closure) {
		t.Errorf("closure after the power cut and a fetch: %v, want %v", got, fx.Closure)
	}
	for _, name := range nixtest.StoreEntries(t, after) {
		if strings.HasSuffix(name, ".storepkg-tmp") {
			t.Errorf("leftover %s after the fetch", name)
		}
	}
}

// fetchNoFatal is fetchInto for a goroutine other than the test's.
func fetchNoFatal(storeRoot string, opts fetch.Options, root string) error {
	ctx := context.Background()
	st, err := store.Open(ctx, storeRoot)
	if err != nil {
		return err
	}
	defer st.Close()
	f, err := fetch.New(st, opts)
	if err != nil {
		return err
	}
	p, err := storepath.Parse(root)
	if err != nil {
		return err
	}
	_, err = f.Fetch(ctx, []storepath.Path{p})
	return err
}

// opts2 is opts without the progress hook.
func opts2(o fetch.Options) fetch.Options {
	o.Progress = nil
	return o
}

func containsBase(abs []string, base string) bool {
	for _, a := range abs {
		if strings.TrimPrefix(a, "/nix/store/") == base {
			return true
		}
	}
	return false
}
