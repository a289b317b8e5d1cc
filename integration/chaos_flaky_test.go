package integration

// Chaos: flaky caches. 5xx answers, connection resets, a stall with no
// bytes, a stream cut in every compression, a truncated NAR, and a cache
// that disappears in the middle of a closure while another has the rest.

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
)

func flakyScenarios() []chaosScenario {
	out := []chaosScenario{
		{name: "cache-5xx", run: cache5xx},
		{name: "cache-resets", run: cacheResets},
		{name: "cache-stall-no-bytes", run: cacheStall},
	}
	for _, comp := range []string{"none", "xz", "zstd", "bzip2", "br"} {
		out = append(out, chaosScenario{
			name: "cut-stream-" + comp,
			run:  func(t *testing.T, r *chaosRun) { cutStream(t, r, comp) },
		})
	}
	return append(out,
		chaosScenario{name: "truncated-nar", run: truncatedNAR},
		chaosScenario{name: "cache-gone-mid-closure", run: cacheGone},
	)
}

// compressedCaches holds the fixture's closure in a cache per
// compression, written by real Nix once per test binary.
var compressedCaches struct {
	mu   sync.Mutex
	dirs map[string]string
}

func compressedCache(t *testing.T, comp string) string {
	t.Helper()
	if comp == "zstd" {
		return fixture.cache
	}
	compressedCaches.mu.Lock()
	defer compressedCaches.mu.Unlock()
	if dir, ok := compressedCaches.dirs[comp]; ok {
		return dir
	}
	dir := filepath.Join(fixture.dir, "cache-"+comp)
	to := "file://" + dir + "?compression=" + comp + "&secret-key=" + fixture.key.SecretFile
	nixtest.Run(t, "nix", "copy", "--store", nixtest.StoreURI(fixture.fx.Store), "--to", to, fixture.fx.Hello, fixture.fx.Tools)
	if compressedCaches.dirs == nil {
		compressedCaches.dirs = map[string]string{}
	}
	compressedCaches.dirs[comp] = dir
	return dir
}

// runHello runs a pod on the fixture's closure and its container to
// its first line; r's fault is the pod's start, its recovery the line.
func runHello(t *testing.T, r *chaosRun, env *critest.Env, timeout time.Duration) (podID string, errs []error) {
	t.Helper()
	fx := fixture.fx
	pod := env.PodConfig("chaos", "default", paths(fx.Hello, fx.Tools))
	r.fault()
	podID = env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	cmd, want := helloCmd("chaos")
	_, errs = runContainer(t, env, podID, pod, cmd, want, timeout)
	r.markRecovered()
	if len(errs) > 0 {
		r.note("%d failed starts before it ran, first: %s", len(errs), errDesc(errs[0]))
	}
	return podID, errs
}

// nars lists the requests of NAR files.
func nars(reqs map[string]int) map[string]int {
	out := map[string]int{}
	for p, n := range reqs {
		if isNAR(p) {
			out[p] = n
		}
	}
	return out
}

// cache5xx: every narinfo's first request gets a 500 and every NAR's
// first two a 503: each is retried, and the pod runs without a failed
// start.
func cache5xx(t *testing.T, r *chaosRun) {
	cache := serveFaultCache(t, fixture.cache)
	cache.add(everyNARinfoFirst, fault{status: 500}, 0)
	cache.add(func(path string, n, _ int) bool { return isNAR(path) && n <= 2 }, fault{status: 503}, 0)
	env := r.start(chaosOptions{substituters: []string{cache.URL}})
	podID, errs := runHello(t, r, env, 2*time.Minute)
	if len(errs) > 0 {
		t.Errorf("%d failed starts: 5xx answers were not retried within the fetch", len(errs))
	}
	for p, n := range nars(cache.requests()) {
		if n != 3 {
			t.Errorf("%s requested %d times, want 3 (two 503s, then the NAR)", p, n)
		}
	}
	deletePod(t, env, podID)
}

// cacheResets: every narinfo's first request and every NAR's first
// request (after a third of it) end in a TCP reset: retried, the pod
// runs without a failed start.
func cacheResets(t *testing.T, r *chaosRun) {
	cache := serveFaultCache(t, fixture.cache)
	cache.add(everyNARinfoFirst, fault{reset: true}, 0)
	for _, p := range fixture.fx.Closure {
		ni := readNarInfo(t, fixture.cache, p)
		cache.add(narOf(ni.URL), fault{reset: true, afterBytes: int64(ni.FileSize) / 3}, 0)
	}
	env := r.start(chaosOptions{substituters: []string{cache.URL}})
	podID, errs := runHello(t, r, env, 2*time.Minute)
	if len(errs) > 0 {
		t.Errorf("%d failed starts: resets were not retried within the fetch", len(errs))
	}
	if n := cache.rangeRequests(); n > 0 {
		r.note("%d NARs resumed with a Range request", n)
	}
	deletePod(t, env, podID)
}

// cacheStall: the largest NAR's first response sends its headers and
// then nothing, keeping the connection open. The fetch notices (no
// progress for its stall timeout), gives the request up and retries; it
// does not wait out FetchTimeout.
func cacheStall(t *testing.T, r *chaosRun) {
	const fetchTimeout = 4 * time.Minute
	cache := serveFaultCache(t, fixture.cache)
	url, _ := largestNAR(t, fixture.cache, fixture.fx.Closure)
	stall := cache.add(narOf(url), fault{stall: true}, 1)
	// kubelet's runtime request timeout (2m), longer than the stall
	// timeout: the start waits for the retried download.
	env := r.start(chaosOptions{substituters: []string{cache.URL}, more: map[string]any{"FetchTimeout": fetchTimeout.String()},
		crictlTimeout: 2 * time.Minute})
	podID, errs := runHello(t, r, env, fetchTimeout)
	select {
	case <-stall.Reached():
	default:
		t.Error("the stall never happened")
	}
	if len(errs) > 0 {
		t.Errorf("%d failed starts: the stalled download was not retried within the fetch", len(errs))
	}
	if r.recovered > fetchTimeout/2 {
		t.Errorf("the pod ran %v after its start: the fetch waited for its timeout (%v) rather than noticing the stall", r.recovered, fetchTimeout)
	}
	r.note("the stalled NAR was requested %d times; the stall timeout of the fetch is not a runtime option", cache.requests()["/"+url])
	deletePod(t, env, podID)
}

// cutStream: the largest NAR, compressed with comp, is cut half-way
// (the server closes the connection): the fetch retries (from the start,
// or resuming with a Range request) and the pod runs without a failed
// start.
func cutStream(t *testing.T, r *chaosRun, comp string) {
	dir := compressedCache(t, comp)
	cache := serveFaultCache(t, dir)
	url, size := largestNAR(t, dir, fixture.fx.Closure)
	cut := cache.add(narOf(url), fault{cut: true, afterBytes: size / 2}, 1)
	env := r.start(chaosOptions{substituters: []string{cache.URL}})
	podID, errs := runHello(t, r, env, 2*time.Minute)
	select {
	case <-cut.Reached():
	default:
		t.Error("the cut never happened")
	}
	if len(errs) > 0 {
		t.Errorf("%d failed starts: the cut %s stream was not retried within the fetch", len(errs), comp)
	}
	how := "from the start"
	if cache.rangeRequests() > 0 {
		how = "resumed with a Range request"
	}
	r.note("%s: the cut NAR (%d bytes) was requested %d times, %s", comp, size, cache.requests()["/"+url], how)
	deletePod(t, env, podID)
}

// truncatedNAR: the cache's copy of the largest NAR is shorter than its
// signed NarSize (uncompressed, so nothing else notices). The start fails
// saying so, naming the path; nothing half-written stays. Once the cache
// is repaired, the retried start runs.
func truncatedNAR(t *testing.T, r *chaosRun) {
	dir := compressedCache(t, "none")
	cache := serveFaultCache(t, dir)
	url, size := largestNAR(t, dir, fixture.fx.Closure)
	trunc := cache.add(func(path string, _, _ int) bool { return path == "/"+url }, fault{truncate: true, afterBytes: size / 2}, 0)
	env := r.start(chaosOptions{substituters: []string{cache.URL}})
	fx := fixture.fx
	pod := env.PodConfig("chaos", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	cmd, want := helloCmd("chaos")
	err := startErr(t, env, podID, pod, cmd)
	if err == nil {
		t.Fatal("the container started from a truncated NAR")
	}
	checkStartError(t, r, err, "shorter than its NarSize", "")
	if !strings.Contains(err.Error(), "code = DataLoss") && !strings.Contains(err.Error(), "code = FailedPrecondition") {
		t.Errorf("the start error is neither DataLoss nor FailedPrecondition: %v", err)
	}
	if !strings.Contains(err.Error(), "glibc-host") {
		t.Errorf("the start error does not name the path: %v", err)
	}
	if left := halfWritten(t, r.storeRoot); len(left) > 0 {
		t.Errorf("half-written entries after the failed fetch: %v", left)
	}
	// The cache is repaired.
	cache.mu.Lock()
	trunc.limit = trunc.hits
	cache.mu.Unlock()
	r.fault()
	runContainer(t, env, podID, pod, cmd, want, 2*time.Minute)
	r.markRecovered()
	deletePod(t, env, podID)
}

// cacheGone: the first cache (by priority) answers the narinfos and
// the first NAR, then disappears (its listener closed: refused
// connections) while the second cache, which has the whole closure too,
// stays. The fetch takes the rest from the second cache and the pod runs.
func cacheGone(t *testing.T, r *chaosRun) {
	first := serveFaultCache(t, fixture.cache)
	gone := first.add(func(path string, _, kindN int) bool { return isNAR(path) && kindN == 2 }, fault{disappear: true}, 1)
	second := serveFaultCache(t, compressedCache(t, "xz"))
	env := r.start(chaosOptions{substituters: []string{first.URL, second.URL}})
	podID, errs := runHello(t, r, env, 2*time.Minute)
	select {
	case <-gone.Reached():
	default:
		t.Error("the first cache never disappeared")
	}
	if len(errs) > 0 {
		t.Errorf("%d failed starts: the fetch did not take the rest from the second cache", len(errs))
	}
	r.note("NARs from the first cache: %d requests, from the second: %d", len(nars(first.requests())), len(nars(second.requests())))
	deletePod(t, env, podID)
}
