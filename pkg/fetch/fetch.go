// Package fetch substitutes Nix closures from binary caches into a node
// store: it resolves the closure breadth-first (one round of concurrent
// narinfo requests per depth level), checks signatures, streams every
// missing NAR through decompression, hashing and a strict unpacker into a
// temporary name, and makes paths valid references-first.
package fetch

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// Errors a caller can tell apart (all are wrapped in *PathError).
var (
	// ErrUntrusted: no signature by a trusted key.
	ErrUntrusted = narinfo.ErrUntrusted
	// ErrHashMismatch: the NAR differs from what the signed narinfo says.
	ErrHashMismatch = errors.New("NAR does not match its narinfo")
	// ErrTooLarge: the closure needs more than Options.MaxNarBytes or
	// Options.MaxPaths allow; refused before any NAR is downloaded.
	ErrTooLarge = errors.New("closure too large")
	// ErrTruncated: the NAR's bytes, the cache's whole file decompressed,
	// end before the signed NarSize (see also ErrUnavailable, for a
	// transfer cut short, and store.NoSpace for a full store).
	ErrTruncated = errors.New("NAR shorter than its NarSize")
)

// kindError is an error of one of the kinds above with a message of its
// own.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// The defaults for real use, when a node or a command names no cache: the
// public NixOS cache and its signing key.
const (
	DefaultSubstituter = "https://cache.nixos.org"
	DefaultPublicKey   = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
)

// Options configure a Fetcher. Only Substituters is required.
type Options struct {
	Substituters []string // URLs in the order given; "?priority=N" or nix-cache-info Priority reorders
	TrustedKeys  []narinfo.PublicKey
	Netrc        *Netrc
	MaxJobs      int // parallel NAR downloads; default 2×CPUs, between 4 and 16
	LookupJobs   int // parallel narinfo requests; default 64
	Retry        RetryPolicy
	StallTimeout time.Duration // a download with no progress for this long is retried; default 60s
	// MaxNarBytes bounds the sum of the signed NarSize of the paths a
	// fetch would substitute (those not yet valid), MaxPaths their number;
	// 0: no bound. With either set, the whole closure's narinfos are
	// walked before any NAR is downloaded, and a fetch over a bound fails
	// with ErrTooLarge having downloaded nothing.
	MaxNarBytes int64
	MaxPaths    int
	// BoundAlso names paths whose closures count against MaxNarBytes and
	// MaxPaths together with the roots', without being fetched: a pod's
	// other path lists, so that the bound is on what the pod adds to the
	// store, counting each path once. Their narinfos are walked after
	// the roots'; one that no cache has is left out of the count (the
	// fetch that wants it reports that). Ignored without a bound.
	BoundAlso  []storepath.Path
	HTTPClient *http.Client
	// Peers is the node's peers file (pkg/peer.LoadFile): with another
	// node in it, each path to download is claimed at its owner and
	// taken from the node that holds it, or fetched upstream under a
	// lease for the others. nil: no peers.
	Peers      *peer.File
	PeerTiming PeerTiming
	// Progress, if set, is called from the fetching goroutines whenever a
	// path completes or bytes arrive; it must be cheap and thread-safe.
	Progress func(fetchapi.Progress)
	Log      *logrus.Entry
}

func (o *Options) retry() RetryPolicy {
	if o.Retry.Attempts > 0 {
		return o.Retry
	}
	return DefaultRetry
}

func (o *Options) stallTimeout() time.Duration {
	if o.StallTimeout > 0 {
		return o.StallTimeout
	}
	return 60 * time.Second
}

func (o *Options) httpClient() *http.Client {
	if o.HTTPClient != nil {
		return o.HTTPClient
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	t.ResponseHeaderTimeout = 60 * time.Second
	return &http.Client{Transport: t}
}

// ErrorKind classifies an error returned by Fetch with fetchapi's
// failure kinds; "" for nil.
func ErrorKind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrUntrusted):
		return fetchapi.KindUntrusted
	case errors.Is(err, ErrTruncated):
		return fetchapi.KindTruncated
	case errors.Is(err, ErrHashMismatch):
		return fetchapi.KindHashMismatch
	case errors.Is(err, ErrNotFound):
		return fetchapi.KindNotFound
	case errors.Is(err, ErrTooLarge):
		return fetchapi.KindTooLarge
	case store.NoSpace(err):
		return fetchapi.KindNoSpace
	case errors.Is(err, ErrUnavailable):
		return fetchapi.KindUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return fetchapi.KindTimeout
	case errors.Is(err, context.Canceled):
		return fetchapi.KindCanceled
	}
	return fetchapi.KindOther
}

// PathError is the error of a path that could not be made valid.
type PathError struct {
	Path     storepath.Path
	NeededBy storepath.Path // a referrer that pulled it into the closure, if any
	Cache    string         // the cache at fault, if one is
	Err      error
}

func (e *PathError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path.Absolute())
	if e.NeededBy != "" {
		b.WriteString(" (needed by " + e.NeededBy.Absolute() + ")")
	}
	b.WriteString(": " + e.Err.Error())
	if e.Cache != "" {
		b.WriteString(" (cache " + e.Cache + ")")
	}
	return b.String()
}

func (e *PathError) Unwrap() error { return e.Err }

// Fetcher substitutes closures into one store. It is safe for concurrent
// use; concurrent fetches of overlapping closures, in this process or in
// others, download each path once (Nix's per-path lock files).
type Fetcher struct {
	store  *store.Store
	caches []*Cache
	opts   Options
	log    *logrus.Entry

	orderOnce sync.Once
	ordered   []*Cache

	peers *peers // nil without peers
}

// New returns a Fetcher for st. Caches are contacted lazily.
func New(st *store.Store, o Options) (*Fetcher, error) {
	if len(o.Substituters) == 0 {
		return nil, errors.New("no substituters configured")
	}
	if o.MaxJobs <= 0 {
		o.MaxJobs = min(max(2*runtime.NumCPU(), 4), 16)
	}
	if o.LookupJobs <= 0 {
		o.LookupJobs = 64
	}
	f := &Fetcher{store: st, opts: o, log: o.Log}
	if f.log == nil {
		f.log = logrus.NewEntry(logrus.StandardLogger())
	}
	for _, s := range o.Substituters {
		c, err := NewCache(s, &f.opts)
		if err != nil {
			return nil, err
		}
		f.caches = append(f.caches, c)
	}
	ps, err := newPeers(o.Peers, &f.opts)
	if err != nil {
		// Peers are an optimisation, never a reason to fail.
		f.log.WithError(err).Warn("fetching without peers")
	}
	f.peers = ps
	return f, nil
}

// cachesInOrder loads every cache's nix-cache-info (concurrently, once)
// and orders them by priority, keeping the configured order among equals.
// Caches whose info fails stay, last, so their error is reported per path.
func (f *Fetcher) cachesInOrder(ctx context.Context) []*Cache {
	f.orderOnce.Do(func() {
		var wg sync.WaitGroup
		for _, c := range f.caches {
			wg.Add(1)
			go func() { defer wg.Done(); c.Info(ctx) }()
		}
		wg.Wait()
		f.ordered = slices.Clone(f.caches)
		rank := func(c *Cache) int {
			if ci, err := c.Info(ctx); err == nil {
				return ci.Priority
			}
			return 1 << 30
		}
		sort.SliceStable(f.ordered, func(i, j int) bool { return rank(f.ordered[i]) < rank(f.ordered[j]) })
	})
	return f.ordered
}

// Fetch makes the closure of roots valid in the store. When the roots are
// already valid it costs one query for the whole closure.
func (f *Fetcher) Fetch(ctx context.Context, roots []storepath.Path) (*fetchapi.Result, error) {
	return f.FetchProgress(ctx, roots, f.opts.Progress)
}

// FetchProgress is Fetch reporting this call's progress to progress (in
// place of Options.Progress; nil for none), so concurrent fetches of one
// Fetcher can be told apart. The same rules apply: cheap and thread-safe.
func (f *Fetcher) FetchProgress(ctx context.Context, roots []storepath.Path, progress func(fetchapi.Progress)) (*fetchapi.Result, error) {
	roots = dedup(roots)
	// Temp roots first: from here on a collector keeps these paths and
	// everything they reference, so what we find valid stays valid.
	if err := f.store.AddTempRoots(ctx, roots...); err != nil {
		return nil, err
	}
	if closure, err := f.store.Closure(ctx, roots); err == nil {
		return &fetchapi.Result{Closure: closure}, nil
	} else if !errors.Is(err, store.ErrNotValid) {
		return nil, err
	}
	r := newRun(ctx, f)
	r.progressFn = progress
	if err := r.run(roots); err != nil {
		return nil, err
	}
	closure, err := f.store.Closure(ctx, roots)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	p := r.progress
	p.CacheBytes = maps.Clone(p.CacheBytes)
	r.mu.Unlock()
	return &fetchapi.Result{Closure: closure, Fetched: r.fetched, Downloaded: r.downloaded.Load(), CacheBytes: p.CacheBytes,
		PeerBytes: p.PeerBytes, UpstreamBytes: p.UpstreamBytes, PeerFailures: p.PeerFailures}, nil
}

func dedup(paths []storepath.Path) []storepath.Path {
	out := slices.Clone(paths)
	slices.Sort(out)
	return slices.Compact(out)
}
