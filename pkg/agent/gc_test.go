package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/gcroottest"
	"github.com/storepkg/storepkg/internal/metricstest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/tmpfstest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

func TestBytesToFree(t *testing.T) {
	for _, c := range []struct {
		size, avail uint64
		usage       float64
		free        uint64
	}{
		{1000, 500, 50, 0},                             // below high
		{1000, 151, 84.9, 0},                           // just below
		{1000, 150, 85, 50},                            // at high: down to 80%
		{1000, 10, 99, 190},                            // nearly full
		{1 << 40, 1 << 36, 93.75, 1<<40/5 - 1<<36 + 1}, // the float computation rounds up
		{0, 0, 0, 0},                                   // no filesystem size: nothing
		{1000, 1000, 0, 0},                             // empty
		{4096 * 4096, 0, 100, 3355444},                 // full: 20% of 16 MiB, rounded up
	} {
		usage, free := bytesToFree(c.size, c.avail, 85, 80)
		if round2(usage) != c.usage || free != c.free {
			t.Errorf("bytesToFree(%d, %d) = %v%%, %d; want %v%%, %d", c.size, c.avail, usage, free, c.usage, c.free)
		}
	}
}

func TestConfigThresholds(t *testing.T) {
	for _, c := range []Config{
		{HighPercent: 80, LowPercent: 85},
		{HighPercent: 101, LowPercent: 80},
		{HighPercent: 85, LowPercent: -1},
		{HighPercent: 0, LowPercent: 10},
	} {
		if err := c.setDefaults(); err == nil {
			t.Errorf("thresholds high %v low %v accepted", c.HighPercent, c.LowPercent)
		}
	}
	c := Config{}
	if err := c.setDefaults(); err != nil || c.HighPercent != 85 || c.LowPercent != 80 || c.MinAge != DefaultMinAge {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}

// fill writes a file beside the store so the filesystem is used to
// fraction of its size.
func fill(t *testing.T, dir string, fraction float64) {
	t.Helper()
	size, avail, err := filesystemUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	need := int64(fraction*float64(size)) - int64(size-avail)
	if need <= 0 {
		t.Fatalf("already at %.1f%%", 100-float64(avail)*100/float64(size))
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for need > 0 {
		n := min(need, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
		need -= n
	}
}

// runAgent runs an agent on the store under root until it has made n
// usage checks, and returns them and a scrape of its metrics.
func runAgent(t *testing.T, root string, cfg Config, n int) ([]GCRun, metricstest.Families) {
	t.Helper()
	return runAgentExpecting(t, root, cfg, n, nil)
}

// runAgentExpecting is runAgent for checks that fail with wantErr (nil:
// that do not fail).
func runAgentExpecting(t *testing.T, root string, cfg Config, n int, wantErr error) ([]GCRun, metricstest.Families) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	runs := make(chan GCRun, n)
	cfg.StoreRoot = root
	cfg.StatusDir = filepath.Join(t.TempDir(), "fetches")
	cfg.ListenAddress = "127.0.0.1:0"
	cfg.Interval = 100 * time.Millisecond
	cfg.OnGC = func(r GCRun) {
		select {
		case runs <- r:
		default: // the test has what it waits for
		}
	}
	a, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		a.Wait()
	}()
	var got []GCRun
	timeout := time.After(60 * time.Second)
	for len(got) < n {
		select {
		case r := <-runs:
			if (wantErr == nil && r.Err != nil) || (wantErr != nil && !errors.Is(r.Err, wantErr)) {
				t.Errorf("usage check: %v, want %v", r.Err, wantErr)
			}
			got = append(got, r)
		case <-timeout:
			t.Fatalf("%d usage checks in 60s, want %d", len(got), n)
		}
	}
	m, err := metricstest.Scrape("http://" + a.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return got, m
}

// TestGCUnderDiskPressure: on a small tmpfs, the agent's loop collects
// only when usage reaches the high threshold, never paths younger than
// the minimum age or rooted, and frees what brings usage to the low
// threshold, not everything; real Nix finds the store consistent after.
func TestGCUnderDiskPressure(t *testing.T) {
	nixtest.Require(t, "nix-store")
	ctx := context.Background()
	const mib = 1 << 20
	root := tmpfstest.Mount(t, 16*mib)

	// A cache with a rooted path and its dependency, and three unrooted ones.
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "agent-test-1", Key: priv}
	cacheDir := t.TempDir()
	w, err := cachetest.NewWriter(cacheDir, key, false)
	if err != nil {
		t.Fatal(err)
	}
	add := func(name string, refs ...storepath.Path) storepath.Path {
		src := filepath.Join(t.TempDir(), name)
		os.MkdirAll(src, 0o755)
		data := make([]byte, mib)
		rand.Read(data)
		if err := os.WriteFile(filepath.Join(src, "data"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		p := cachetest.MakePath("agent-gc", name)
		if _, err := w.Add(p, src, refs); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dep := add("dep-1.0")
	keep := add("keep-1.0", dep)
	junk := []storepath.Path{add("junk-a"), add("junk-b"), add("junk-c")}

	// Fetch and root in a Store closed before the agent runs: an open
	// Store keeps what it fetched as temporary roots.
	func() {
		st, err := store.Open(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		f, err := fetch.New(st, fetch.Options{Substituters: []string{"file://" + cacheDir}, TrustedKeys: []narinfo.PublicKey{key.Public()}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Fetch(ctx, append([]storepath.Path{keep}, junk...)); err != nil {
			t.Fatal(err)
		}
		if err := st.AddGCRoot(ctx, "agent-test-keep", keep); err != nil {
			t.Fatal(err)
		}
	}()
	valid := func() map[storepath.Path]bool {
		st, err := store.Open(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		v, err := st.ValidSubset(ctx, append([]storepath.Path{keep, dep}, junk...))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Below the high threshold: no collection.
	runs, m := runAgent(t, root, Config{MinAge: -1}, 2)
	for _, r := range runs {
		if r.Collected {
			t.Fatalf("collected at %.1f%% usage", r.UsagePercent)
		}
	}
	if got := m.Get("storepkg_gc_runs_total", "result", "success"); got != 0 {
		t.Errorf("gc_runs_total %v below the threshold", got)
	}
	if got := m.Get("storepkg_store_paths"); got != 5 {
		t.Errorf("store_paths %v, want 5", got)
	}

	fill(t, root, 0.90)

	// Above it, but every path is younger than the minimum age.
	runs, _ = runAgent(t, root, Config{MinAge: time.Hour}, 1)
	if r := runs[0]; !r.Collected || r.Result == nil || r.Result.Valid != 0 {
		t.Fatalf("under pressure with min age 1h: %+v", r)
	}
	for p, ok := range valid() {
		if !ok {
			t.Errorf("%s collected although younger than the minimum age", p)
		}
	}

	// No minimum age: the collection frees what brings usage to 80%
	// (two of the three 1 MiB junk paths), then the next check finds
	// usage below the high threshold.
	runs, m = runAgent(t, root, Config{MinAge: -1}, 2)
	r := runs[0]
	t.Logf("usage %.1f%% of %d bytes: asked to free %d, freed %d, deleted %v", r.UsagePercent, r.Size, r.MaxFreed, r.Result.BytesFreed, r.Result.Dead)
	if !r.Collected || r.UsagePercent < 85 {
		t.Fatalf("first check: %+v", r)
	}
	if want := uint64(float64(r.Size)*0.2) - r.Available; r.MaxFreed < want || r.MaxFreed > want+1 {
		t.Errorf("MaxFreed %d, want %d", r.MaxFreed, want)
	}
	if r.Result.Valid != 2 || r.Result.BytesFreed < r.MaxFreed {
		t.Errorf("deleted %d paths, %d bytes; want 2 paths and at least %d bytes", r.Result.Valid, r.Result.BytesFreed, r.MaxFreed)
	}
	if runs[1].Collected {
		t.Errorf("second check collected again at %.1f%%", runs[1].UsagePercent)
	}
	v := valid()
	if !v[keep] || !v[dep] {
		t.Errorf("a rooted closure was collected: keep %v dep %v", v[keep], v[dep])
	}
	left := 0
	for _, j := range junk {
		if v[j] {
			left++
		}
	}
	if left != 1 {
		t.Errorf("%d junk paths left, want 1", left)
	}
	if got := m.Get("storepkg_gc_runs_total", "result", "success"); got != 1 {
		t.Errorf("gc_runs_total{result=success} = %v, want 1", got)
	}
	for name, want := range map[string]float64{
		"storepkg_gc_deleted_paths_total": 2,
		"storepkg_gc_freed_bytes_total":   float64(r.Result.BytesFreed),
		"storepkg_gc_duration_seconds":    1, // observations
		"storepkg_store_paths":            3,
	} {
		if got := m.Get(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := m.Get("storepkg_store_filesystem_usage_ratio"); got <= 0 || got >= 0.85 {
		t.Errorf("store_filesystem_usage_ratio %v after collecting", got)
	}
	nixtest.Verify(t, root)
}

// TestSweepsRootsOfGoneShims: the agent's loop removes the GC roots of a
// shim that no longer runs (its owner record names a reaped process) and
// keeps those of a running one, below the GC threshold too. An empty
// owner record (as a power loss leaves one written without fsync) keeps
// its own roots, is counted, and does not stop the sweep.
func TestSweepsRootsOfGoneShims(t *testing.T) {
	root := t.TempDir()
	st, err := store.Open(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	p := storepath.Path("7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	self := procid.Self()
	for owner, w := range map[string]procid.ID{
		"running-sandbox": self,
		"killed-sandbox":  {PID: gone.Process.Pid, PIDNamespace: self.PIDNamespace},
	} {
		if err := gcowner.Write(root, owner, w); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(gcowner.RootsDir(root), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p.Absolute(), filepath.Join(gcowner.RootsDir(root), gcowner.RootName(owner, p))); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "nix", "var", "storepkg", "owners", "other.json"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(p.Absolute(), filepath.Join(gcowner.RootsDir(root), gcowner.RootName("other", p))); err != nil {
		t.Fatal(err)
	}
	_, m := runAgent(t, root, Config{HighPercent: 100, LowPercent: 99}, 1)
	if _, err := os.Lstat(filepath.Join(gcowner.RootsDir(root), gcowner.RootName("killed-sandbox", p))); !os.IsNotExist(err) {
		t.Errorf("the gone shim's root is still there: %v", err)
	}
	for _, owner := range []string{"running-sandbox", "other"} {
		if _, err := os.Lstat(filepath.Join(gcowner.RootsDir(root), gcowner.RootName(owner, p))); err != nil {
			t.Errorf("the root of %s: %v", owner, err)
		}
	}
	if got := m.Get("storepkg_gc_owner_records_invalid"); got != 1 {
		t.Errorf("gc_owner_records_invalid = %v, want 1", got)
	}
}

// TestGCUnresolvedRoots: under disk pressure, a collection that finds
// roots it cannot resolve (an auto root into a directory not mounted
// under the agent's root, a loop of links) deletes no valid path, counts
// as a failed run and reports them in storepkg_gc_unresolved_roots.
func TestGCUnresolvedRoots(t *testing.T) {
	nixtest.Require(t, "nix-store")
	root := tmpfstest.Mount(t, 16<<20)
	src := filepath.Join(t.TempDir(), "unrooted")
	if err := os.WriteFile(src, []byte("unrooted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(root), "--add", src))
	gcroottest.Unresolvable(t, root)
	fill(t, root, 0.90)

	runs, m := runAgentExpecting(t, root, Config{MinAge: -1}, 1, store.ErrUnresolvedRoots)
	if r := runs[0]; !r.Collected || r.Result == nil || r.Result.Valid != 0 || len(r.Result.Unresolved) != 2 {
		t.Fatalf("collection: %+v", r)
	}
	if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
		t.Errorf("%s deleted although roots could not be resolved: %v", p, err)
	}
	for name, want := range map[string]float64{
		"storepkg_gc_unresolved_roots":    2,
		"storepkg_gc_deleted_paths_total": 0,
	} {
		if got := m.Get(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := m.Get("storepkg_gc_runs_total", "result", "failure"); got != 1 {
		t.Errorf("gc_runs_total{result=failure} = %v, want 1", got)
	}
}
