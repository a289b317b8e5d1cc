package fetch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// PeerTiming bounds what a slow, gone or bad peer can cost a fetch. Zero
// fields take the defaults; tests shorten them.
type PeerTiming struct {
	// ClaimTimeout bounds a claim or done request at a path's owner, and
	// is the grace a holder has beyond a wait round to answer: an owner
	// that does not answer in time sends the path upstream. Default 2s.
	ClaimTimeout time.Duration
	// RenewEvery is how often the leases of paths this fetch downloads
	// are renewed at their owners (the coordinator's lease lives 30s).
	// Default 10s.
	RenewEvery time.Duration
	// WaitRound is one narinfo?wait= request to the holder of a path;
	// the owner is asked again between rounds. Default 20s.
	WaitRound time.Duration
	// MaxWait bounds the time one path waits on holders before it goes
	// upstream. Default 5 minutes.
	MaxWait time.Duration
	// Stall: a peer whose NAR makes no progress (or whose response does
	// not start) for this long is given up and the NAR fetched upstream.
	// Default 10s.
	Stall time.Duration
}

func (t PeerTiming) withDefaults() PeerTiming {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.ClaimTimeout, 2*time.Second)
	def(&t.RenewEvery, 10*time.Second)
	def(&t.WaitRound, 20*time.Second)
	def(&t.MaxWait, 5*time.Minute)
	def(&t.Stall, 10*time.Second)
	return t
}

// Bounds of the peer flow that need no option.
const (
	// claimBatchDelay: claims for one owner made within this delay go in
	// one request (a closure level's lookups end close together).
	claimBatchDelay = 5 * time.Millisecond
	maxClaimBatch   = 1000
	// maxGone: holders that fail one path before it goes upstream
	// without asking its owner again.
	maxGone = 3
	// minRound: a holder that answers "not found" at once to a wait
	// round is asked again no sooner than this.
	minRound = 250 * time.Millisecond
	// haveWait: the wait asked of a holder said to have the path.
	haveWait = time.Second
)

// peers is a Fetcher's view of the node's peers.
type peers struct {
	file   *peer.File
	timing PeerTiming
	client *peer.Client
	caches map[string]*Cache // by peer name, for NARs
}

// newPeers returns nil when the file lists no other node.
func newPeers(f *peer.File, o *Options) (*peers, error) {
	if f == nil || len(f.Peers) < 2 {
		return nil, nil
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("peers: %w", err)
	}
	t := o.PeerTiming.withDefaults()
	// The coordination client has no header timeout: a wait round's
	// answer comes after up to WaitRound, and each call has a deadline.
	coord := http.DefaultTransport.(*http.Transport).Clone()
	coord.MaxIdleConnsPerHost = 64
	// A NAR's response must start within Stall, and its body then moves
	// or is given up (stallReader).
	nars := coord.Clone()
	nars.ResponseHeaderTimeout = t.Stall
	ps := &peers{
		file: f, timing: t,
		client: &peer.Client{Self: f.Self, Token: f.Token, HTTP: &http.Client{Transport: coord}},
		caches: map[string]*Cache{},
	}
	narClient := &http.Client{Transport: nars,
		// A peer serves its own files: it has no reason to redirect, and
		// the token must not follow one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, p := range f.Peers {
		if p.Name == f.Self {
			continue
		}
		u, err := url.Parse(p.URL)
		if err != nil {
			return nil, fmt.Errorf("peers: %s: %w", p.Name, err)
		}
		c := &Cache{URL: peer.CachePrefix + p.Name, peer: true}
		c.t = &httpTransport{base: u, client: narClient, auth: ps.client.Authorize,
			retry: RetryPolicy{Attempts: 1}, stall: t.Stall}
		ps.caches[p.Name] = c
	}
	return ps, nil
}

// peerRun is one run's peer state: claim batches, held leases.
type peerRun struct {
	r  *run
	ps *peers

	mu      sync.Mutex
	batches map[string]*claimBatch // by owner name
	leases  map[storepath.Path]peer.Peer
	warned  map[string]bool // peers whose failure was logged as a warning
	bg      sync.WaitGroup
	stop    chan struct{}
}

func newPeerRun(r *run, ps *peers) *peerRun {
	pr := &peerRun{r: r, ps: ps, batches: map[string]*claimBatch{},
		leases: map[storepath.Path]peer.Peer{}, warned: map[string]bool{}, stop: make(chan struct{})}
	pr.bg.Add(1)
	go func() { defer pr.bg.Done(); pr.renew() }()
	return pr
}

// close stops renewing and waits for the done requests in flight.
func (pr *peerRun) close() {
	close(pr.stop)
	pr.bg.Wait()
}

// peerSource is where a path's NAR comes from when a peer has it.
type peerSource struct {
	holder peer.Peer
	ni     *narinfo.NarInfo // the signed narinfo with the peer's URL, Compression and FileSize
	cache  *Cache
}

// decide finds where it's NAR comes from, waiting (without a download
// slot) while another node holds it: a peer's (non-nil), or upstream
// (nil), under a lease held by this node when the owner granted one.
// Every failure of a peer sends the path upstream, after a bounded
// delay.
func (pr *peerRun) decide(it *item) *peerSource {
	ctx := pr.r.ctx
	ps := pr.ps
	owner, _ := peer.Owner(ps.file.Peers, it.path)
	log := pr.r.f.log.WithField("path", it.path.Absolute())
	deadline := time.Now().Add(ps.timing.MaxWait)
	var gone string
	goneCount := 0
	for ctx.Err() == nil {
		res, err := pr.claim(owner, it.path, gone)
		if err != nil {
			pr.failed()
			pr.logFailure(log.WithError(err), owner.Name, "peer owner %s: claim failed; fetching upstream", owner.Name)
			return nil
		}
		if res.holder == ps.file.Self {
			pr.mu.Lock()
			pr.leases[it.path] = owner
			pr.mu.Unlock()
			return nil
		}
		holder, ok := ps.file.Lookup(res.holder)
		if !ok || ps.caches[holder.Name] == nil {
			log.Warnf("peer owner %s names holder %q, not in the peers file; fetching upstream", owner.Name, res.holder)
			return nil
		}
		if !time.Now().Before(deadline) {
			log.Warnf("waited %s for peer %s; fetching upstream", ps.timing.MaxWait, holder.Name)
			return nil
		}
		wait := ps.timing.WaitRound
		if res.have {
			// It has the path: the answer comes at once. A second of
			// wait forgives a holder that registered it a moment before
			// its server sees it.
			wait = min(wait, haveWait)
		}
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, wait+ps.timing.ClaimTimeout)
		ni, err := ps.client.NarInfo(rctx, holder, it.path, wait)
		cancel()
		gone = ""
		switch {
		case err == nil:
			src, err := pr.source(it, holder, ni)
			if err != nil {
				pr.failed()
				pr.logFailure(log.WithError(err), holder.Name, "peer %s: refused; fetching upstream", holder.Name)
				return nil
			}
			return src
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, peer.ErrNotFound) && !res.have:
			// Not there yet: ask the owner again, where an expired
			// lease makes this node the holder.
			if d := min(wait, minRound) - time.Since(start); d > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(d):
				}
			}
			continue
		case errors.Is(err, peer.ErrNotFound):
			err = errors.New("does not have it")
		}
		// Gone, hung, or lost the path.
		pr.failed()
		goneCount++
		if goneCount >= maxGone {
			pr.logFailure(log.WithError(err), holder.Name, "peer %s failed, holder %d of %d to fail; fetching upstream", holder.Name, goneCount, maxGone)
			return nil
		}
		pr.logFailure(log.WithError(err), holder.Name, "peer %s failed; asking owner %s again", holder.Name, owner.Name)
		gone = holder.Name
	}
	return nil
}

// source checks a holder's narinfo against the signed one: the same NAR
// (hash, size, references), in a compression this fetch decodes.
func (pr *peerRun) source(it *item, holder peer.Peer, ni *narinfo.NarInfo) (*peerSource, error) {
	switch {
	case !sameNAR(ni, it.ni):
		return nil, errors.New("its narinfo describes another NAR than the signed one")
	case !knownCompression(ni.Compression):
		return nil, fmt.Errorf("unknown compression %q", ni.Compression)
	case ni.URL == "":
		return nil, errors.New("its narinfo has no URL")
	}
	merged := *it.ni
	merged.URL, merged.Compression, merged.FileSize, merged.FileHash = ni.URL, ni.Compression, ni.FileSize, ni.FileHash
	return &peerSource{holder: holder, ni: &merged, cache: pr.ps.caches[holder.Name]}, nil
}

// fetchFromPeer unpacks it's NAR from src into it.tmp; on failure the
// temporary tree is gone.
func (r *run) fetchFromPeer(it *item, src *peerSource) (string, error) {
	tmp, err := r.fetchNarFrom(it, src.ni, src.cache)
	if err != nil {
		r.peers.failed()
		if r.ctx.Err() == nil {
			r.peers.logFailure(r.f.log.WithError(err), src.holder.Name, "%s: NAR from peer %s failed; fetching upstream", it.path.Absolute(), src.holder.Name)
		}
	}
	return tmp, err
}

// logFailure logs a failure of peer name: its first in the run as a
// warning, the rest at debug level, since a gone peer fails every path
// it owns or holds (PeerFailures counts them all).
func (pr *peerRun) logFailure(e *logrus.Entry, name, format string, args ...any) {
	pr.mu.Lock()
	first := !pr.warned[name]
	pr.warned[name] = true
	pr.mu.Unlock()
	if first {
		e.Warnf(format, args...)
	} else {
		e.Debugf(format, args...)
	}
}

func (pr *peerRun) failed() {
	pr.r.mu.Lock()
	pr.r.progress.PeerFailures++
	pr.r.mu.Unlock()
	pr.r.report()
}

// registered tells the owners of the paths this node held leases on
// that it has them now.
func (pr *peerRun) registered(paths []storepath.Path) {
	byOwner := map[string][]storepath.Path{}
	owners := map[string]peer.Peer{}
	pr.mu.Lock()
	for _, p := range paths {
		if o, ok := pr.leases[p]; ok {
			delete(pr.leases, p)
			byOwner[o.Name] = append(byOwner[o.Name], p)
			owners[o.Name] = o
		}
	}
	pr.mu.Unlock()
	for name, ps := range byOwner {
		pr.bg.Add(1)
		go func() {
			defer pr.bg.Done()
			// Not the run's context: the paths are valid, and the owner
			// should hear it even as the run ends.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(pr.r.ctx), pr.ps.timing.ClaimTimeout)
			defer cancel()
			if err := pr.ps.client.Done(ctx, owners[name], ps); err != nil {
				pr.r.f.log.WithError(err).Warnf("peer owner %s: done", name)
			}
		}()
	}
}

// abandon drops the lease of a path this node will not provide: it
// expires at the owner, and the waiters take over then.
func (pr *peerRun) abandon(p storepath.Path) {
	pr.mu.Lock()
	delete(pr.leases, p)
	pr.mu.Unlock()
}

// renew renews the held leases every RenewEvery until close.
func (pr *peerRun) renew() {
	t := time.NewTicker(pr.ps.timing.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-pr.stop:
			return
		case <-t.C:
		}
		byOwner := map[string][]storepath.Path{}
		owners := map[string]peer.Peer{}
		pr.mu.Lock()
		for p, o := range pr.leases {
			byOwner[o.Name] = append(byOwner[o.Name], p)
			owners[o.Name] = o
		}
		pr.mu.Unlock()
		for name, ps := range byOwner {
			ctx, cancel := context.WithTimeout(pr.r.ctx, pr.ps.timing.ClaimTimeout)
			if _, err := pr.ps.client.Claim(ctx, owners[name], ps, nil); err != nil && pr.r.ctx.Err() == nil {
				pr.r.f.log.WithError(err).Warnf("peer owner %s: renewing %d leases", name, len(ps))
			}
			cancel()
		}
	}
}

// claimResult is one path's answer from its owner.
type claimResult struct {
	holder string
	have   bool
	err    error
}

type claimWant struct {
	path storepath.Path
	gone string
	ch   chan claimResult
}

// claimBatch collects the claims for one owner made within
// claimBatchDelay into one request.
type claimBatch struct {
	owner peer.Peer
	wants []claimWant
}

// claim asks owner who holds path (gone: a holder found unable to serve
// it), batched with the other claims for owner.
func (pr *peerRun) claim(owner peer.Peer, path storepath.Path, gone string) (claimResult, error) {
	ch := make(chan claimResult, 1)
	pr.mu.Lock()
	b := pr.batches[owner.Name]
	if b == nil {
		b = &claimBatch{owner: owner}
		pr.batches[owner.Name] = b
		time.AfterFunc(claimBatchDelay, func() { pr.flush(owner.Name, b) })
	}
	b.wants = append(b.wants, claimWant{path: path, gone: gone, ch: ch})
	if len(b.wants) >= maxClaimBatch {
		delete(pr.batches, owner.Name)
		go pr.send(b)
	}
	pr.mu.Unlock()
	select {
	case res := <-ch:
		return res, res.err
	case <-pr.r.ctx.Done():
		return claimResult{}, pr.r.ctx.Err()
	}
}

func (pr *peerRun) flush(name string, b *claimBatch) {
	pr.mu.Lock()
	if pr.batches[name] != b {
		pr.mu.Unlock()
		return // sent when it filled up
	}
	delete(pr.batches, name)
	pr.mu.Unlock()
	pr.send(b)
}

func (pr *peerRun) send(b *claimBatch) {
	paths := make([]storepath.Path, 0, len(b.wants))
	gone := map[storepath.Path]string{}
	for _, w := range b.wants {
		paths = append(paths, w.path)
		if w.gone != "" {
			gone[w.path] = w.gone
		}
	}
	ctx, cancel := context.WithTimeout(pr.r.ctx, pr.ps.timing.ClaimTimeout)
	defer cancel()
	resp, err := pr.ps.client.Claim(ctx, b.owner, paths, gone)
	var have map[string]bool
	if err == nil {
		have = map[string]bool{}
		for _, p := range resp.Have {
			have[p] = true
		}
	}
	for _, w := range b.wants {
		res := claimResult{err: err}
		if err == nil {
			abs := w.path.Absolute()
			res.holder, res.have = resp.Holders[abs], have[abs]
			if res.holder == "" {
				res.err = fmt.Errorf("peer owner %s: no holder for %s in its answer", b.owner.Name, abs)
			}
		}
		w.ch <- res
	}
}
