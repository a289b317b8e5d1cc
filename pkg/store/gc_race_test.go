package store_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
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
// own. It returns the roots, their closure sizes and every path's
// references. seed makes the store paths differ between runs, so that
// another run on the machine cannot keep ours alive as runtime roots.
func writeOverlappingCache(t *testing.T, dir, seed string, key narinfo.SecretKey) ([]storepath.Path, []int, map[storepath.Path][]storepath.Path) {
	t.Helper()
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	refsOf := map[storepath.Path][]storepath.Path{}
	add := func(name string, refs ...storepath.Path) storepath.Path {
		p := cachetest.MakePath(seed, name)
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
		refsOf[p] = refs
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
	return roots, sizes, refsOf
}

// closureOf is the closure of paths over refs.
func closureOf(refs map[storepath.Path][]storepath.Path, paths ...storepath.Path) map[storepath.Path]bool {
	c := map[storepath.Path]bool{}
	var walk func(p storepath.Path)
	walk = func(p storepath.Path) {
		if !c[p] {
			c[p] = true
			for _, r := range refs[p] {
				walk(r)
			}
		}
	}
	for _, p := range paths {
		walk(p)
	}
	return c
}

// TestGCRaceWithFetches runs our collector while two other processes
// fetch overlapping closures into the same store, in rounds built so that
// the collector certainly runs while a fetch is mid-way and certainly has
// valid paths to delete that the fetches share, whatever the machine's
// load. Round r, with closures a, b, c = r, r+1, r+2 (mod 3) and helpers
// A and B (swapping roles each round), starts from an empty store:
//
//  1. A fetches a and closes its Store: a's paths are valid garbage.
//  2. B fetches b from an HTTP cache that holds its NAR requests; the
//     test waits until two are held: b's root and one of the paths it
//     references (the middle path a+2 or b's own leaf). B is then
//     mid-way: it holds b's root and the paths it references as
//     temporary roots, and the locks of those it downloads, and it has
//     found a's middle path a+1 valid and counts on it and its leaves.
//  3. A starts fetching c (which shares a middle path with a and one
//     with b, so it may wait on B's lock), and one collection runs,
//     from start to end while B is held. It must delete a's root,
//     which nothing holds, and keep all that B counts on.
//  4. B's NARs go through; collections run back to back until both
//     fetches have ended, racing them.
//  5. Both close their Stores; a collection must leave the store empty.
//
// Then, for interleavings nobody planned, both helpers fetch and close
// closures in a loop while collections run back to back.
//
// After every fetch, still holding its temporary roots, the fetching
// process checks that every path of the closure is valid and on disk with
// exactly its registered NAR hash. At the end real Nix finds the store
// consistent.
func TestGCRaceWithFetches(t *testing.T) {
	nixtest.Require(t, "nix-store")
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "gc-race-1", Key: priv}
	cache := filepath.Join(t.TempDir(), "cache")
	roots, sizes, refs := writeOverlappingCache(t, cache, fmt.Sprintf("gc-race-%d", time.Now().UnixNano()), key)
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	gs, err := store.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()

	var rootNames, sizeStrs []string
	for i, r := range roots {
		// Base names: a store path in a process's environment would be
		// a runtime root.
		rootNames = append(rootNames, r.Base())
		sizeStrs = append(sizeStrs, strconv.Itoa(sizes[i]))
	}
	env := []string{
		"STOREPKG_GC_RACE_HELPER=1",
		"STOREPKG_GC_RACE_ROOT=" + root,
		"STOREPKG_GC_RACE_KEY=" + key.Public().String(),
		"STOREPKG_GC_RACE_ROOTS=" + strings.Join(rootNames, ","),
		"STOREPKG_GC_RACE_SIZES=" + strings.Join(sizeStrs, ","),
	}
	helpers := []*raceHelper{
		startRaceHelper(t, ctx, "0", cache, env),
		startRaceHelper(t, ctx, "1", cache, env),
	}

	quiet := logrus.New()
	quiet.SetLevel(logrus.WarnLevel)
	var collections, deleted, valid, keptLate, fetches, downloaded int
	var gcTime time.Duration
	collect := func() *store.GCResult {
		t.Helper()
		t0 := time.Now()
		res, err := gs.CollectGarbage(ctx, store.GCOptions{Log: logrus.NewEntry(quiet)})
		gcTime += time.Since(t0)
		if err != nil {
			t.Fatalf("collection %d: %v", collections, err)
		}
		collections++
		deleted += len(res.Dead)
		valid += res.Valid
		keptLate += res.KeptLate
		return res
	}
	fetched := func(h *raceHelper, line string, k int) {
		t.Helper()
		var gotK, n int
		if _, err := fmt.Sscanf(line, "fetched %d %d", &gotK, &n); err != nil || gotK != k {
			t.Fatalf("helper %s answered %q, want fetched %d", h.name, line, k)
		}
		fetches++
		downloaded += n
	}

	const rounds = 12
	start := time.Now()
	for r := range rounds {
		a, b, c := r%3, (r+1)%3, (r+2)%3
		A, B := helpers[r%2], helpers[1-r%2]

		fetched(A, A.do(t, ctx, fmt.Sprintf("fetch %d", a)), a)
		A.do(t, ctx, "close")

		// Two NARs: a fetch asks for the NARs of a root's references only
		// once it has made them temporary roots and checked which are
		// valid.
		held := B.gate.shut(2)
		B.send(t, fmt.Sprintf("fetch %d", b))
		select {
		case <-held:
		case <-B.done:
			t.Fatalf("round %d: helper %s exited before fetching %s:\n%s", r, B.name, roots[b], B.output())
		case <-ctx.Done():
			t.Fatalf("round %d: helper %s did not ask for two NARs of %s's closure in time\n%s", r, B.name, roots[b], B.output())
		}
		A.send(t, fmt.Sprintf("fetch %d", c))
		res := collect()
		// What B counts on: b's root, the paths it references, and the
		// closure of those already valid.
		counted := map[storepath.Path]bool{roots[b]: true}
		inA := closureOf(refs, roots[a])
		for _, q := range refs[roots[b]] {
			counted[q] = true
			if inA[q] {
				maps.Copy(counted, closureOf(refs, q))
			}
		}
		for q := range counted {
			if slices.Contains(res.Dead, q.Absolute()) {
				t.Errorf("round %d: the collection while helper %s was fetching %s deleted %s, which that fetch holds", r, B.name, roots[b], q)
			}
		}
		if !slices.Contains(res.Dead, roots[a].Absolute()) {
			t.Errorf("round %d: the collection while helper %s was fetching %s kept %s, which nothing holds (deleted: %v)",
				r, B.name, roots[b], roots[a], res.Dead)
		}
		B.gate.open()

		pending := map[*raceHelper]int{A: c, B: b}
		for len(pending) > 0 {
			collect()
			for h, k := range pending {
				if line, ok := h.poll(t); ok {
					fetched(h, line, k)
					delete(pending, h)
				}
			}
		}
		A.do(t, ctx, "close")
		B.do(t, ctx, "close")
		if res := collect(); res.Valid < sizes[b] {
			t.Errorf("round %d: the last collection deleted %d valid paths, want at least the %d of %s: %v", r, res.Valid, sizes[b], roots[b], res.Dead)
		}
		if entries := nixtest.StoreEntries(t, root); len(entries) != 1 || entries[0] != ".links" {
			t.Fatalf("round %d: store not empty after a collection with no fetch running: %v", r, entries)
		}
	}

	// The free-running part: what overlaps is up to the machine; the
	// rounds above made sure of the overlaps that must happen.
	const loops = 100
	for i, h := range helpers {
		h.send(t, fmt.Sprintf("loop %d %d", loops, i))
	}
	pending := map[*raceHelper]bool{helpers[0]: true, helpers[1]: true}
	for len(pending) > 0 {
		collect()
		for h := range pending {
			if line, ok := h.poll(t); ok {
				var n, got int
				if _, err := fmt.Sscanf(line, "looped %d %d", &got, &n); err != nil || got != loops {
					t.Fatalf("helper %s answered %q, want looped %d", h.name, line, loops)
				}
				fetches += loops
				downloaded += n
				delete(pending, h)
			}
		}
	}
	collect()
	if entries := nixtest.StoreEntries(t, root); len(entries) != 1 || entries[0] != ".links" {
		t.Errorf("store not empty after the final collection: %v", entries)
	}

	t.Logf("%d rounds and %d loops, %d fetches (%d paths downloaded) by %d processes in %v, alongside %d collections (%v collecting, %v each on average) that deleted %d entries (%d valid paths) and spared %d that came alive late",
		rounds, loops, fetches, downloaded, len(helpers), time.Since(start).Round(time.Millisecond), collections, gcTime.Round(time.Millisecond),
		(gcTime / time.Duration(max(collections, 1))).Round(time.Microsecond), deleted, valid, keptLate)

	for _, h := range helpers {
		h.stop(t)
	}
	nixtest.Verify(t, root)
	if out := nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(root), "--gc", "--print-dead"); strings.TrimSpace(out) != "" {
		t.Errorf("garbage left after the final collection:\n%s", out)
	}
}

// narGate serves a binary cache directory over HTTP and, while shut,
// holds every NAR request until it is opened: the fetcher waiting for it
// is mid-way, with its temporary roots and the path's lock held.
type narGate struct {
	files http.Handler

	mu       sync.Mutex
	wait     chan struct{} // non-nil while shut; closed when opened
	held     chan struct{} // closed when want requests are held
	want     int           // requests to hold before held is closed
	released bool          // the gate never shuts again (the server is closing)
}

// shut makes the gate hold NAR requests; the channel is closed once n
// of them are held.
func (g *narGate) shut(n int) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = make(chan struct{})
	g.want = n
	if !g.released {
		g.wait = make(chan struct{})
	}
	return g.held
}

func (g *narGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wait != nil {
		close(g.wait)
		g.wait = nil
	}
}

// release opens the gate for good, so that the server can close.
func (g *narGate) release() {
	g.mu.Lock()
	g.released = true
	g.mu.Unlock()
	g.open()
}

func (g *narGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/nar/") {
		g.mu.Lock()
		wait := g.wait
		if wait != nil && g.want > 0 {
			if g.want--; g.want == 0 {
				close(g.held)
			}
		}
		g.mu.Unlock()
		if wait != nil {
			select {
			case <-wait:
			case <-r.Context().Done():
				return
			}
		}
	}
	g.files.ServeHTTP(w, r)
}

// raceHelper is one fetching process of TestGCRaceWithFetches (running
// TestGCRaceHelper), with its own cache server on 127.0.0.1, so the test
// can hold its downloads alone. It takes commands on stdin: "fetch K"
// (open a Store, fetch and check closure K, keep the Store open) and
// "close", and "loop N OFFSET" (N times fetch closure (i+OFFSET) mod 3
// and close); it answers each with a line "gc-race-helper: ...".
type raceHelper struct {
	name    string
	gate    *narGate
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies chan string   // the answers, prefix trimmed; closed at the end of its output
	done    chan struct{} // closed once it has exited and its output is read

	mu  sync.Mutex
	out bytes.Buffer // everything it printed
	err error        // its exit status, once done
}

const raceHelperPrefix = "gc-race-helper: "

func startRaceHelper(t *testing.T, ctx context.Context, name, cacheDir string, env []string) *raceHelper {
	t.Helper()
	h := &raceHelper{
		name:    name,
		gate:    &narGate{files: http.FileServer(http.Dir(cacheDir))},
		replies: make(chan string, 16),
		done:    make(chan struct{}),
	}
	srv := httptest.NewServer(h.gate)
	t.Cleanup(srv.Close)
	t.Cleanup(h.gate.release) // before srv.Close, which waits for held requests

	h.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGCRaceHelper$", "-test.count=1", "-test.v")
	// A helper stuck past the test's deadline dumps its goroutines.
	h.cmd.Cancel = func() error { return h.cmd.Process.Signal(syscall.SIGQUIT) }
	h.cmd.WaitDelay = 10 * time.Second
	h.cmd.Env = append(append(os.Environ(), env...), "STOREPKG_GC_RACE_CACHE="+srv.URL)
	stdin, err := h.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.stdin = stdin
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stdout, h.cmd.Stderr = pw, pw
	if err := h.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	t.Cleanup(func() { h.stop(t) })
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			l := sc.Text()
			h.mu.Lock()
			h.out.WriteString(l + "\n")
			h.mu.Unlock()
			if rest, ok := strings.CutPrefix(l, raceHelperPrefix); ok {
				h.replies <- rest
			}
		}
		pr.Close()
		close(h.replies)
		err := h.cmd.Wait()
		h.mu.Lock()
		h.err = err
		h.mu.Unlock()
		close(h.done)
	}()
	return h
}

func (h *raceHelper) output() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("(exit: %v)\n%s", h.err, h.out.String())
}

func (h *raceHelper) send(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(h.stdin, cmd+"\n"); err != nil {
		t.Fatalf("helper %s: sending %q: %v\n%s", h.name, cmd, err, h.output())
	}
}

// answer checks one answer of the helper; ok=false means it is gone.
func (h *raceHelper) answer(t *testing.T, line string, ok bool) string {
	t.Helper()
	if !ok {
		<-h.done
		t.Fatalf("helper %s ended without answering:\n%s", h.name, h.output())
	}
	return line
}

// do sends cmd and waits for its answer.
func (h *raceHelper) do(t *testing.T, ctx context.Context, cmd string) string {
	t.Helper()
	h.send(t, cmd)
	select {
	case l, ok := <-h.replies:
		return h.answer(t, l, ok)
	case <-ctx.Done():
		t.Fatalf("helper %s: no answer to %q: %v\n%s", h.name, cmd, ctx.Err(), h.output())
		return ""
	}
}

// poll returns the helper's answer if it has one.
func (h *raceHelper) poll(t *testing.T) (string, bool) {
	t.Helper()
	select {
	case l, ok := <-h.replies:
		return h.answer(t, l, ok), true
	default:
		return "", false
	}
}

// stop ends the helper (end of its input) and waits for it; a helper
// that does not end in time is killed by its PID.
func (h *raceHelper) stop(t *testing.T) {
	t.Helper()
	h.gate.release()
	h.stdin.Close()
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
	h.mu.Lock()
	err := h.err
	h.mu.Unlock()
	if err != nil && !t.Failed() {
		t.Errorf("helper %s: %s", h.name, h.output())
	}
}

// TestGCRaceHelper is a fetching process of TestGCRaceWithFetches.
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
	opts := fetch.Options{
		Substituters: []string{os.Getenv("STOREPKG_GC_RACE_CACHE")},
		TrustedKeys:  []narinfo.PublicKey{pk},
	}
	var st *store.Store
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd := sc.Text()
		switch {
		case strings.HasPrefix(cmd, "fetch "):
			k, err := strconv.Atoi(strings.TrimPrefix(cmd, "fetch "))
			if err != nil || k < 0 || k >= len(roots) || st != nil {
				t.Fatalf("bad command %q", cmd)
			}
			// A fetch that does not end is a deadlock between the
			// fetchers (a registrar holding locks while waiting for news
			// that never comes once happened): fail rather than hang.
			ctx, cancel := context.WithTimeout(context.Background(), stallTimeout)
			var n int
			st, n, err = fetchAndCheck(ctx, root, opts, roots[k], sizes[k])
			cancel()
			if err != nil && errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("fetch of %s did not end within %v: fetchers deadlocked", roots[k], stallTimeout)
			}
			if err != nil {
				t.Fatalf("fetch of %s: %v", roots[k], err)
			}
			fmt.Printf("%sfetched %d %d\n", raceHelperPrefix, k, n)
		case strings.HasPrefix(cmd, "loop "):
			var n, offset int
			if _, err := fmt.Sscanf(cmd, "loop %d %d", &n, &offset); err != nil || st != nil {
				t.Fatalf("bad command %q", cmd)
			}
			downloaded := 0
			for i := range n {
				k := (i + offset) % len(roots)
				ctx, cancel := context.WithTimeout(context.Background(), stallTimeout)
				st, d, err := fetchAndCheck(ctx, root, opts, roots[k], sizes[k])
				cancel()
				if err != nil && errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("fetch %d of %s did not end within %v: fetchers deadlocked", i, roots[k], stallTimeout)
				}
				if err != nil {
					t.Fatalf("fetch %d of %s: %v", i, roots[k], err)
				}
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
				downloaded += d
			}
			fmt.Printf("%slooped %d %d\n", raceHelperPrefix, n, downloaded)
		case cmd == "close":
			if st == nil {
				t.Fatalf("close without a store")
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st = nil
			fmt.Printf("%sclosed\n", raceHelperPrefix)
		default:
			t.Fatalf("bad command %q", cmd)
		}
	}
}

// stallTimeout bounds one fetch of a few small paths in
// TestGCRaceWithFetches (beyond the time its NARs are held); they take
// milliseconds.
const stallTimeout = 30 * time.Second

// fetchAndCheck fetches the closure of p with a fresh Store and, before
// returning that Store open (its temporary roots held), checks every path
// of the closure: valid, present, and with the NAR hash and size it was
// registered with. It returns how many paths it downloaded.
func fetchAndCheck(ctx context.Context, root string, opts fetch.Options, p storepath.Path, size int) (_ *store.Store, _ int, err error) {
	st, err := store.Open(ctx, root)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	f, err := fetch.New(st, opts)
	if err != nil {
		return nil, 0, err
	}
	res, err := f.Fetch(ctx, []storepath.Path{p})
	if err != nil {
		return nil, 0, err
	}
	if len(res.Closure) != size {
		return nil, 0, fmt.Errorf("closure has %d paths, want %d", len(res.Closure), size)
	}
	for _, q := range res.Closure {
		info, err := st.QueryPathInfo(ctx, q)
		if err != nil {
			return nil, 0, fmt.Errorf("right after the fetch: %w", err)
		}
		var buf bytes.Buffer
		if err := nar.Dump(&buf, st.RealPath(q)); err != nil {
			return nil, 0, fmt.Errorf("right after the fetch, %s is valid but not readable: %w", q, err)
		}
		if sha256.Sum256(buf.Bytes()) != info.NarHash || uint64(buf.Len()) != info.NarSize {
			return nil, 0, fmt.Errorf("right after the fetch, %s is valid but its contents differ from its registration", q)
		}
	}
	return st, len(res.Fetched), nil
}
