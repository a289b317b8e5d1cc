package fetch_test

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// fastPeerTiming keeps the fault tests short; the bounds they check are
// these.
var fastPeerTiming = fetch.PeerTiming{ClaimTimeout: 500 * time.Millisecond, RenewEvery: 300 * time.Millisecond,
	WaitRound: time.Second, MaxWait: 30 * time.Second, Stall: time.Second}

func peerOptions(t *testing.T, upstream string, key nixtest.Key, pf *peer.File) fetch.Options {
	return fetch.Options{Substituters: []string{upstream}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)},
		Retry: fetch.RetryPolicy{Attempts: 1}, Peers: pf, PeerTiming: fastPeerTiming}
}

// fetchAt fetches the fixture's closure into n's store.
func fetchAt(ctx context.Context, t *testing.T, n *peerNode, opts fetch.Options, root string) (*fetchapi.Result, error) {
	t.Helper()
	f, err := fetch.New(n.st, opts)
	if err != nil {
		t.Fatal(err)
	}
	return f.Fetch(ctx, []storepath.Path{mustPath(t, root)})
}

// checkStore verifies n's store with Nix and checks it holds the
// closure and nothing else (no temporary or half-written entries).
func checkStore(t *testing.T, n *peerNode, closure []string) {
	t.Helper()
	nixtest.Verify(t, n.root)
	var want []string
	for _, p := range closure {
		want = append(want, filepath.Base(p))
	}
	var got []string
	for _, e := range nixtest.StoreEntries(t, n.root) {
		if e != ".links" { // Nix's, made when nix-store --verify opens the store
			got = append(got, e)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("node %s's store holds %v, want %v", n.name, got, want)
	}
}

// TestPeersFetchEachPathOnce: three nodes fetch one closure at once
// from a counting upstream; each NAR crosses the uplink once, the other
// nodes take it from the node that fetched it, and every store verifies.
func TestPeersFetchEachPathOnce(t *testing.T) {
	fx, key, caches := fixture(t)
	up := newCountingUpstream(t, caches["zstd"])
	nodes := newPeerNodes(t, "node-a", "node-b", "node-c")
	// node-c serves its NARs compressed on the fly, the others as they
	// are (the agent's default): both reach the fetch.
	nodes[2].compression = peer.CompressionZstd
	startPeerNodes(t, nodes, 0)
	list := peerList(nodes)

	start := time.Now()
	results := make([]*fetchapi.Result, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opts := peerOptions(t, up.url, key, peersFile(t, n.name, list))
			opts.PeerTiming = fetch.PeerTiming{} // the defaults
			// One download slot: a node waiting on another with its only
			// slot would deadlock with one waiting on it.
			opts.MaxJobs = 1
			results[i], errs[i] = fetchAt(context.Background(), t, n, opts, fx.Root)
		}()
	}
	wg.Wait()
	t.Logf("three fetches took %s", time.Since(start))
	var peerBytes, upstreamBytes int64
	for i, n := range nodes {
		if errs[i] != nil {
			t.Fatalf("node %s: %v", n.name, errs[i])
		}
		r := results[i]
		t.Logf("node %s: %d fetched, %d bytes from peers, %d from upstream, %d peer failures, by cache %v",
			n.name, len(r.Fetched), r.PeerBytes, r.UpstreamBytes, r.PeerFailures, r.CacheBytes)
		if r.PeerBytes+r.UpstreamBytes != r.Downloaded {
			t.Errorf("node %s: %d peer + %d upstream bytes, %d downloaded", n.name, r.PeerBytes, r.UpstreamBytes, r.Downloaded)
		}
		for c := range r.CacheBytes {
			if c != up.url && c != "peer:node-a" && c != "peer:node-b" && c != "peer:node-c" {
				t.Errorf("node %s: bytes counted for cache %q, want the upstream URL or peer:<name>", n.name, c)
			}
		}
		if r.PeerFailures != 0 {
			t.Errorf("node %s: %d peer failures, want none", n.name, r.PeerFailures)
		}
		peerBytes += r.PeerBytes
		upstreamBytes += r.UpstreamBytes
		checkStore(t, n, fx.Closure)
	}
	total, most := up.counts()
	t.Logf("upstream: %d NAR requests for %d paths, %d bytes; peers: %d bytes", total, len(fx.Closure), upstreamBytes, peerBytes)
	if total != len(fx.Closure) || most != 1 {
		t.Errorf("upstream served %d NARs (one file %d times) for a closure of %d paths; want each once", total, most, len(fx.Closure))
	}
	if peerBytes == 0 {
		t.Error("no bytes came from peers")
	}
}

// TestPeersRenewLeases: each upstream download takes longer than the
// lease TTL; the holders renew their leases, so the waiters keep
// waiting and each NAR still crosses the uplink once.
func TestPeersRenewLeases(t *testing.T) {
	fx, key, caches := fixture(t)
	const ttl = 1200 * time.Millisecond
	up := newSlowUpstream(t, caches["zstd"], 2*ttl)
	nodes := newPeerNodes(t, "node-a", "node-b", "node-c")
	startPeerNodes(t, nodes, ttl)
	list := peerList(nodes)
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opts := peerOptions(t, up.url, key, peersFile(t, n.name, list))
			opts.PeerTiming.RenewEvery = ttl / 4
			_, errs[i] = fetchAt(context.Background(), t, n, opts, fx.Root)
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			t.Fatalf("node %s: %v", n.name, errs[i])
		}
		checkStore(t, n, fx.Closure)
	}
	if total, most := up.counts(); total != len(fx.Closure) || most != 1 {
		t.Errorf("upstream served %d NARs (one file %d times) for a closure of %d paths; want each once", total, most, len(fx.Closure))
	}
}

// TestPeerDoneAfterRegistering: a node that fetched paths under leases
// reports them done, so the owners name it as a holder that has them
// (not a lease, which would lapse in 30 s).
func TestPeerDoneAfterRegistering(t *testing.T) {
	fx, key, caches := fixture(t)
	up := newCountingUpstream(t, caches["zstd"])
	nodes := newPeerNodes(t, "node-a", "node-b")
	startPeerNodes(t, nodes, 0)
	list := peerList(nodes)
	if _, err := fetchAt(context.Background(), t, nodes[1], peerOptions(t, up.url, key, peersFile(t, "node-b", list)), fx.Root); err != nil {
		t.Fatal(err)
	}
	c := &peer.Client{Self: "node-a", Token: testPeerToken}
	ownedByA := 0
	for _, abs := range fx.Closure {
		p := mustPath(t, abs)
		owner, _ := peer.Owner(list, p)
		if owner.Name == "node-a" {
			ownedByA++
		}
		resp, err := c.Claim(context.Background(), owner, []storepath.Path{p}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if h := resp.Holders[abs]; h != "node-b" || !slices.Contains(resp.Have, abs) {
			t.Errorf("%s at its owner %s: holder %q (has it: %v), want node-b, which has it", abs, owner.Name, h, slices.Contains(resp.Have, abs))
		}
	}
	if ownedByA == 0 {
		t.Error("node-a owns none of the closure: the done records were not tested")
	}
}

// seedDone makes holder the done holder of paths at every coordinator.
func seedDone(t *testing.T, holder string, list []peer.Peer, paths []string, skip ...string) {
	t.Helper()
	c := &peer.Client{Self: holder, Token: testPeerToken}
	var ps []storepath.Path
	for _, p := range paths {
		ps = append(ps, mustPath(t, p))
	}
	for _, o := range list {
		if slices.Contains(skip, o.Name) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Done(ctx, o, ps)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPeerTamperedNAR: a file of each path in a peer's store had a byte
// flipped after the path was registered, so its server streams NARs
// that do not match their hashes: each is refused and counted, the path
// comes from upstream, nothing partial stays.
func TestPeerTamperedNAR(t *testing.T) {
	fx, key, caches := fixture(t)
	up := newCountingUpstream(t, caches["zstd"])
	nodes := newPeerNodes(t, "node-a", "node-b")
	a, b := nodes[0], nodes[1]
	startPeerNodes(t, nodes, 0)
	list := peerList(nodes)
	if _, err := fetchAt(context.Background(), t, a, peerOptions(t, up.url, key, nil), fx.Root); err != nil {
		t.Fatal(err)
	}
	tamper(t, a, fx.Closure)
	seedDone(t, a.name, list, fx.Closure)
	up.nar = map[string]int{}

	res, err := fetchAt(context.Background(), t, b, peerOptions(t, up.url, key, peersFile(t, b.name, list)), fx.Root)
	if err != nil {
		t.Fatal(err)
	}
	n := len(fx.Closure)
	t.Logf("%d peer NAR requests, %d peer failures, %d bytes from peers, %d from upstream",
		a.narRequests.Load(), res.PeerFailures, res.PeerBytes, res.UpstreamBytes)
	if got := a.narRequests.Load(); got != int64(n) {
		t.Errorf("%d NAR requests to the tampering peer, want %d (one per path)", got, n)
	}
	if res.PeerFailures != n {
		t.Errorf("%d peer failures, want %d", res.PeerFailures, n)
	}
	if total, most := up.counts(); total != n || most != 1 {
		t.Errorf("upstream served %d NARs (one %d times), want each of %d once", total, most, n)
	}
	if len(res.Fetched) != n {
		t.Errorf("%d paths fetched, want %d", len(res.Fetched), n)
	}
	checkStore(t, b, fx.Closure)
}

// TestPeerHashRefusalsCounted: the tampered NARs also count as hash
// refusals in the progress, like any cache's.
func TestPeerHashRefusalsCounted(t *testing.T) {
	fx, key, caches := fixture(t)
	up := newCountingUpstream(t, caches["zstd"])
	nodes := newPeerNodes(t, "node-a", "node-b")
	a, b := nodes[0], nodes[1]
	startPeerNodes(t, nodes, 0)
	list := peerList(nodes)
	if _, err := fetchAt(context.Background(), t, a, peerOptions(t, up.url, key, nil), fx.Root); err != nil {
		t.Fatal(err)
	}
	tamper(t, a, fx.Closure)
	seedDone(t, a.name, list, fx.Closure)
	var mu sync.Mutex
	var last fetchapi.Progress
	opts := peerOptions(t, up.url, key, peersFile(t, b.name, list))
	opts.Progress = func(p fetchapi.Progress) { mu.Lock(); last = p; mu.Unlock() }
	if _, err := fetchAt(context.Background(), t, b, opts, fx.Root); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := len(fx.Closure); last.HashRefusals != n || last.PeerFailures != n || last.PeerBytes == 0 || last.UpstreamBytes == 0 {
		t.Errorf("progress %+v: want %d hash refusals and peer failures, bytes from both", last, n)
	}
}

// ownerSplit picks two node names such that self owns some of paths and
// other owns the rest, so that a test covers both.
func ownerSplit(t *testing.T, paths []string) (self, other string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		self, other = "node-b", "node-"+string(rune('c'+i%20))+string(rune('0'+i/20))
		list := []peer.Peer{{Name: self}, {Name: other}}
		owned := 0
		for _, p := range paths {
			if o, _ := peer.Owner(list, mustPath(t, p)); o.Name == self {
				owned++
			}
		}
		if owned > 0 && owned < len(paths) {
			return self, other
		}
	}
	t.Fatal("no pair of names splits the closure's owners")
	return "", ""
}

// TestPeerGoneOrHung: the other node is gone (connection refused) or
// hangs (accepts and never answers). The paths it owns go upstream when
// the claim fails; those whose done holder it is go upstream once it is
// reported gone to their owner; each costs a bounded delay.
func TestPeerGoneOrHung(t *testing.T) {
	fx, key, caches := fixture(t)
	selfName, otherName := ownerSplit(t, fx.Closure)
	for _, mode := range []string{"gone", "hung"} {
		t.Run(mode, func(t *testing.T) {
			up := newCountingUpstream(t, caches["zstd"])
			nodes := newPeerNodes(t, selfName)
			b := nodes[0]
			var otherURL string
			switch mode {
			case "gone":
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				otherURL = "http://" + ln.Addr().String()
				ln.Close()
			case "hung":
				otherURL = hungPeer(t)
			}
			other := peer.Peer{Name: otherName, URL: otherURL}
			startPeerNodes(t, nodes, 0, other)
			list := []peer.Peer{other, {Name: b.name, URL: b.url}}
			// The other node fetched the closure and told our node.
			seedDone(t, otherName, list, fx.Closure, otherName)

			start := time.Now()
			res, err := fetchAt(context.Background(), t, b, peerOptions(t, up.url, key, peersFile(t, b.name, list)), fx.Root)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			n := len(fx.Closure)
			t.Logf("%s: %s, %d peer failures, %d bytes from upstream", mode, elapsed, res.PeerFailures, res.UpstreamBytes)
			// Every path failed once at the other node: as owner or holder.
			if res.PeerFailures != n {
				t.Errorf("%d peer failures, want %d", res.PeerFailures, n)
			}
			if total, most := up.counts(); total != n || most != 1 || res.PeerBytes != 0 {
				t.Errorf("upstream served %d NARs (one %d times), %d bytes from peers; want each of %d once, none from peers", total, most, res.PeerBytes, n)
			}
			// A claim timeout, then (holder) a narinfo timeout and a claim.
			if bound := 3*fastPeerTiming.ClaimTimeout + 3*time.Second; elapsed > bound {
				t.Errorf("took %s, more than the bound %s", elapsed, bound)
			}
			checkStore(t, b, fx.Closure)
		})
	}
}

// TestPeerLeaseHolderKilled: node A takes the leases and dies
// mid-fetch (its upstream never answers, then it is cancelled, sending
// nothing); node B waits on A while the leases live, takes them over
// once they expire, and fetches upstream.
func TestPeerLeaseHolderKilled(t *testing.T) {
	fx, key, caches := fixture(t)
	up := newCountingUpstream(t, caches["zstd"])
	const ttl = 2 * time.Second
	nodes := newPeerNodes(t, "node-a", "node-b")
	a, b := nodes[0], nodes[1]
	startPeerNodes(t, nodes, ttl)
	list := peerList(nodes)

	// A's upstream takes its claims' worth of NAR requests and hangs.
	hungNARs := make(chan struct{}, 100)
	release := make(chan struct{})
	hung := nixtest.Serve(t, caches["zstd"], func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(r.URL.Path) > 5 && r.URL.Path[:5] == "/nar/" {
				hungNARs <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				}
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	t.Cleanup(func() { close(release) })
	ctxA, killA := context.WithCancel(context.Background())
	doneA := make(chan error, 1)
	go func() {
		_, err := fetchAt(ctxA, t, a, peerOptions(t, hung, key, peersFile(t, a.name, list)), fx.Root)
		doneA <- err
	}()
	select {
	case <-hungNARs:
	case <-time.After(30 * time.Second):
		t.Fatal("node A never asked its upstream for a NAR")
	}
	// Let A claim the rest of the closure (its walk does not wait on
	// downloads), then kill it.
	time.Sleep(500 * time.Millisecond)
	killA()
	if err := <-doneA; err == nil {
		t.Fatal("node A's fetch succeeded; want it killed")
	}
	killed := time.Now()

	res, err := fetchAt(context.Background(), t, b, peerOptions(t, up.url, key, peersFile(t, b.name, list)), fx.Root)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	n := len(fx.Closure)
	t.Logf("B done %s after A was killed (lease TTL %s), %d peer failures", took, ttl, res.PeerFailures)
	if total, most := up.counts(); total != n || most != 1 || res.PeerBytes != 0 {
		t.Errorf("upstream served %d NARs (one %d times), %d bytes from peers; want each of %d once, none from peers", total, most, res.PeerBytes, n)
	}
	// B respected A's leases (some at least) and took over after they
	// expired, within a wait round and a claim.
	if took < ttl/2 {
		t.Errorf("B finished %s after A was killed: it did not wait for A's leases (TTL %s)", took, ttl)
	}
	if bound := ttl + fastPeerTiming.WaitRound + fastPeerTiming.ClaimTimeout + 5*time.Second; took > bound {
		t.Errorf("B took %s after A was killed, more than the bound %s", took, bound)
	}
	checkStore(t, b, fx.Closure)
}
