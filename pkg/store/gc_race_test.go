package store_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/nar"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// writeOverlappingCache writes three closures that share most of their
// paths: six leaves, three middle paths using overlapping pairs of
// leaves, and three roots each using two middle paths and a leaf of its
// own. It returns the roots and their closure sizes.
func writeOverlappingCache(t *testing.T, dir string, key narinfo.SecretKey) ([]storepath.Path, []int) {
	t.Helper()
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	add := func(name string, refs ...storepath.Path) storepath.Path {
		p := cachetest.MakePath("gc-race", name)
		d := filepath.Join(src, p.Base())
		// A few files, so that unpacking and deleting take a moment.
		for i := range 8 {
			f := filepath.Join(d, "share", fmt.Sprintf("f%d", i))
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				t.Fatal(err)
			}
			content := strings.Repeat(name+" ", 200)
			for _, r := range refs {
				content += "uses " + r.Absolute() + "\n"
			}
			if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := w.Add(p, d, refs); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var leaves []storepath.Path
	for i := range 6 {
		leaves = append(leaves, add(fmt.Sprintf("leaf-%d", i)))
	}
	var mids []storepath.Path
	for i := range 3 {
		mids = append(mids, add(fmt.Sprintf("mid-%d", i), leaves[i], leaves[(i+1)%3], leaves[5]))
	}
	var roots []storepath.Path
	for i := range 3 {
		roots = append(roots, add(fmt.Sprintf("root-%d", i), mids[i], mids[(i+1)%3], leaves[3+i%2]))
	}
	// Closure sizes: root + 2 mids + the mids' leaves (3 of 0..2, plus
	// 5) + its own leaf (3 or 4).
	sizes := []int{1 + 2 + 4 + 1, 1 + 2 + 4 + 1, 1 + 2 + 4 + 1}
	return roots, sizes
}

// TestGCRaceWithFetches runs our collector in a loop while two other
// processes fetch overlapping closures into the same store, over and
// over, each with a fresh Store that it closes afterwards (which drops
// its temporary roots, so what it fetched is garbage again and gets
// collected while the other process may be fetching a closure that
// shares it). After every fetch, still holding its temporary roots, the
// fetching process checks that every path of the closure is valid and
// on disk with exactly its registered NAR hash. At the end real Nix
// finds the store consistent.
func TestGCRaceWithFetches(t *testing.T) {
	nixtest.Require(t, "nix-store")
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "gc-race-1", Key: priv}
	cache := filepath.Join(t.TempDir(), "cache")
	roots, sizes := writeOverlappingCache(t, cache, key)
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	gs, err := store.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()

	const helpers = 2
	budget := 20 * time.Second
	deadline := time.Now().Add(budget)
	var rootNames, sizeStrs []string
	for i, r := range roots {
		// Base names: a store path in a process's environment would be
		// a runtime root.
		rootNames = append(rootNames, r.Base())
		sizeStrs = append(sizeStrs, strconv.Itoa(sizes[i]))
	}
	helperCtx, cancelHelpers := context.WithDeadline(ctx, deadline.Add(20*time.Second))
	defer cancelHelpers()
	type helperOut struct {
		out []byte
		err error
	}
	outs := make([]helperOut, helpers)
	var wg sync.WaitGroup
	var running atomic.Int32
	running.Store(helpers)
	for h := range helpers {
		cmd := exec.CommandContext(helperCtx, os.Args[0], "-test.run=^TestGCRaceHelper$", "-test.count=1", "-test.v")
		// A helper stuck past its deadline dumps its goroutines.
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
		cmd.WaitDelay = 10 * time.Second
		cmd.Env = append(os.Environ(),
			"STOREPKG_GC_RACE_HELPER=1",
			"STOREPKG_GC_RACE_ROOT="+root,
			"STOREPKG_GC_RACE_CACHE=file://"+cache,
			"STOREPKG_GC_RACE_KEY="+key.Public().String(),
			"STOREPKG_GC_RACE_ROOTS="+strings.Join(rootNames, ","),
			"STOREPKG_GC_RACE_SIZES="+strings.Join(sizeStrs, ","),
			"STOREPKG_GC_RACE_OFFSET="+strconv.Itoa(h),
			"STOREPKG_GC_RACE_DEADLINE="+strconv.FormatInt(deadline.UnixNano(), 10),
			"STOREPKG_GC_RACE_MAX=300",
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer running.Add(-1)
			outs[h].out, outs[h].err = cmd.CombinedOutput()
		}()
	}

	quiet := logrus.New()
	quiet.SetLevel(logrus.WarnLevel)
	start := time.Now()
	var collections, deleted, valid, keptLate int
	var gcTime time.Duration
	for running.Load() > 0 {
		t0 := time.Now()
		res, err := gs.CollectGarbage(ctx, store.GCOptions{Log: logrus.NewEntry(quiet)})
		gcTime += time.Since(t0)
		if err != nil {
			t.Errorf("collection %d: %v", collections, err)
			break
		}
		collections++
		// Pause now and then, so that fetches sometimes find no
		// collector running and write their roots file directly.
		if collections%4 == 0 {
			time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
		}
		deleted += len(res.Dead)
		valid += res.Valid
		keptLate += res.KeptLate
	}
	wg.Wait()
	elapsed := time.Since(start)
	total, totalStalled := 0, 0
	for h, o := range outs {
		last := ""
		for _, l := range strings.Split(string(o.out), "\n") {
			if strings.HasPrefix(l, "gc-race-helper:") {
				last = l
			}
		}
		if o.err != nil || last == "" {
			t.Errorf("helper %d: %v\n%s", h, o.err, o.out)
			continue
		}
		t.Log(last)
		var n, fetched, stalled int
		fmt.Sscanf(strings.TrimPrefix(last, "gc-race-helper: "), "%d fetches, %d paths downloaded, %d stalled", &n, &fetched, &stalled)
		total += n
		totalStalled += stalled
	}
	t.Logf("%d fetches in %v by %d processes, alongside %d collections (%v collecting, %v each on average) that deleted %d entries (%d valid paths) and spared %d that came alive late",
		total, elapsed.Round(time.Millisecond), helpers, collections, gcTime.Round(time.Millisecond),
		(gcTime / time.Duration(max(collections, 1))).Round(time.Microsecond), deleted, valid, keptLate)
	if totalStalled > 0 {
		t.Logf("%d fetches stalled (pkg/fetch's cross-process deadlock, see stallTimeout) and were retried", totalStalled)
	}
	if total < 50 || collections < 20 || valid == 0 {
		t.Errorf("too little overlap to mean anything: %d fetches, %d collections, %d valid paths deleted", total, collections, valid)
	}

	nixtest.Verify(t, root)
	res, err := gs.CollectGarbage(ctx, store.GCOptions{Log: logrus.NewEntry(quiet)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("final collection deleted %d entries", len(res.Dead))
	nixtest.Verify(t, root)
	if out := nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(root), "--gc", "--print-dead"); strings.TrimSpace(out) != "" {
		t.Errorf("garbage left after the final collection:\n%s", out)
	}
	if entries := nixtest.StoreEntries(t, root); len(entries) != 1 || entries[0] != ".links" {
		t.Errorf("store not empty after the final collection: %v", entries)
	}
}

// TestGCRaceHelper is the fetching process of TestGCRaceWithFetches.
func TestGCRaceHelper(t *testing.T) {
	if os.Getenv("STOREPKG_GC_RACE_HELPER") == "" {
		t.Skip("helper process of TestGCRaceWithFetches")
	}
	logrus.SetLevel(logrus.WarnLevel)
	root := os.Getenv("STOREPKG_GC_RACE_ROOT")
	pk, err := narinfo.ParsePublicKey(os.Getenv("STOREPKG_GC_RACE_KEY"))
	if err != nil {
		t.Fatal(err)
	}
	var roots []storepath.Path
	for _, r := range strings.Split(os.Getenv("STOREPKG_GC_RACE_ROOTS"), ",") {
		p, err := storepath.ParseBase(r)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, p)
	}
	var sizes []int
	for _, s := range strings.Split(os.Getenv("STOREPKG_GC_RACE_SIZES"), ",") {
		n, _ := strconv.Atoi(s)
		sizes = append(sizes, n)
	}
	offset, _ := strconv.Atoi(os.Getenv("STOREPKG_GC_RACE_OFFSET"))
	maxIters, _ := strconv.Atoi(os.Getenv("STOREPKG_GC_RACE_MAX"))
	dl, _ := strconv.ParseInt(os.Getenv("STOREPKG_GC_RACE_DEADLINE"), 10, 64)
	deadline := time.Unix(0, dl)
	opts := fetch.Options{
		Substituters: []string{os.Getenv("STOREPKG_GC_RACE_CACHE")},
		TrustedKeys:  []narinfo.PublicKey{pk},
	}
	fetches, downloaded, stalled := 0, 0, 0
	for i := 0; i < maxIters && time.Now().Before(deadline); i++ {
		k := (i + offset) % len(roots)
		// A fetch that does not end is a deadlock between the fetchers
		// (a registrar holding locks while waiting for news that never
		// comes once happened): fail rather than hang.
		ctx, cancel := context.WithTimeout(context.Background(), stallTimeout)
		n, err := fetchAndCheck(ctx, root, opts, roots[k], sizes[k])
		cancel()
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("fetch %d of %s did not end within %v: fetchers deadlocked", i, roots[k], stallTimeout)
		}
		if err != nil {
			t.Fatalf("fetch %d of %s: %v", i, roots[k], err)
		}
		fetches++
		downloaded += n
	}
	fmt.Printf("gc-race-helper: %d fetches, %d paths downloaded, %d stalled fetches retried\n", fetches, downloaded, stalled)
}

// stallTimeout bounds one fetch of a few small paths in
// TestGCRaceWithFetches; they take milliseconds.
const stallTimeout = 30 * time.Second

// fetchAndCheck fetches the closure of p with a fresh Store and, before
// closing it, checks every path of the closure: valid, present, and
// with the NAR hash and size it was registered with.
func fetchAndCheck(ctx context.Context, root string, opts fetch.Options, p storepath.Path, size int) (int, error) {
	st, err := store.Open(ctx, root)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	f, err := fetch.New(st, opts)
	if err != nil {
		return 0, err
	}
	res, err := f.Fetch(ctx, []storepath.Path{p})
	if err != nil {
		return 0, err
	}
	if len(res.Closure) != size {
		return 0, fmt.Errorf("closure has %d paths, want %d", len(res.Closure), size)
	}
	for _, q := range res.Closure {
		info, err := st.QueryPathInfo(ctx, q)
		if err != nil {
			return 0, fmt.Errorf("right after the fetch: %w", err)
		}
		var buf bytes.Buffer
		if err := nar.Dump(&buf, st.RealPath(q)); err != nil {
			return 0, fmt.Errorf("right after the fetch, %s is valid but not readable: %w", q, err)
		}
		if sha256.Sum256(buf.Bytes()) != info.NarHash || uint64(buf.Len()) != info.NarSize {
			return 0, fmt.Errorf("right after the fetch, %s is valid but its contents differ from its registration", q)
		}
	}
	return len(res.Fetched), nil
}
