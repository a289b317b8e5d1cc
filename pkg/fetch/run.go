package fetch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/nar"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// item is one path this run substitutes.
type item struct {
	path     storepath.Path
	neededBy storepath.Path
	ni       *narinfo.NarInfo
	tmp      string // where it is unpacked (store.PrepareInstall), once queued
	cache    *Cache
	// countOnly: walked for a bound (Options.BoundAlso), not fetched.
	countOnly bool
}

// event reaches the registrar: a path unpacked under tmp and locked by us,
// or (tmp == "") a path another process made valid meanwhile.
type event struct {
	it   *item
	tmp  string
	lock *store.PathLock
}

type run struct {
	f      *Fetcher
	ctx    context.Context
	cancel context.CancelFunc
	caches []*Cache

	errOnce sync.Once
	err     error

	jobs      *slots // download slots, largest NAR first
	downloads sync.WaitGroup
	events    chan event

	// validBefore holds paths found valid while resolving: references
	// that need no work.
	validBefore map[storepath.Path]bool

	// With a bound (Options.MaxNarBytes, MaxPaths), the walk only
	// collects the paths to substitute; their downloads start once the
	// whole closure is known to be within the bounds.
	roots     []storepath.Path
	seen      map[storepath.Path]bool
	pending   []*item
	wantBytes int64
	counted   int // paths of BoundAlso's closures in pending

	// peers: the run's peer state, nil without peers.
	peers *peerRun

	mu         sync.Mutex
	fetched    []storepath.Path
	downloaded atomic.Int64
	progress   fetchapi.Progress // CacheBytes is ours: copied for each report
	progressFn func(fetchapi.Progress)
}

func newRun(ctx context.Context, f *Fetcher) *run {
	ctx, cancel := context.WithCancel(ctx)
	r := &run{
		f: f, ctx: ctx, cancel: cancel,
		caches:      f.cachesInOrder(ctx),
		jobs:        newSlots(f.opts.MaxJobs, runtime.GOMAXPROCS(0)),
		events:      make(chan event, 64),
		validBefore: map[storepath.Path]bool{},
		seen:        map[storepath.Path]bool{},
	}
	if f.peers != nil {
		r.peers = newPeerRun(r, f.peers)
	}
	return r
}

// fail records the first error and stops the run's remaining work.
func (r *run) fail(err error) {
	r.errOnce.Do(func() {
		r.err = err
		r.cancel()
	})
}

func (r *run) run(roots []storepath.Path) error {
	defer r.cancel()
	registrarDone := make(chan struct{})
	go func() {
		defer close(registrarDone)
		r.registrar()
	}()
	r.resolve(roots)
	r.downloads.Wait()
	close(r.events)
	<-registrarDone
	if r.peers != nil {
		r.peers.close()
	}
	if r.err == nil && r.ctx.Err() != nil {
		return r.ctx.Err()
	}
	return r.err
}

// bounded reports whether the run has a bound on what it substitutes.
func (r *run) bounded() bool { return r.f.opts.MaxNarBytes > 0 || r.f.opts.MaxPaths > 0 }

// resolve walks the closure and starts the downloads: as each narinfo is
// verified, or, with a bound, all at once after the walk, so that a
// closure over a bound is refused before any NAR is requested.
func (r *run) resolve(roots []storepath.Path) {
	r.roots = roots
	r.walk(roots, false)
	if !r.bounded() || r.ctx.Err() != nil {
		return
	}
	// What the roots' closure did not reach is counted, not fetched.
	if also := r.f.opts.BoundAlso; len(also) > 0 {
		r.walk(also, true)
		if r.ctx.Err() != nil {
			return
		}
	}
	r.jobs.hold()
	for _, it := range r.pending {
		if !it.countOnly {
			r.startDownload(it)
		}
	}
	r.jobs.resume()
}

// count adds it, verified, to the paths a bounded run will substitute,
// and refuses the closure as soon as they exceed a bound.
func (r *run) count(it *item) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = append(r.pending, it)
	r.wantBytes += int64(it.ni.NarSize)
	if it.countOnly {
		r.counted++
	}
	o := r.f.opts
	switch {
	case o.MaxPaths > 0 && len(r.pending) > o.MaxPaths:
		return fmt.Errorf("%s needs more paths not yet in the store than the limit of %d: %w",
			r.whatIsCounted(), o.MaxPaths, ErrTooLarge)
	case o.MaxNarBytes > 0 && r.wantBytes > o.MaxNarBytes:
		return fmt.Errorf("%s needs at least %d bytes of NARs not yet in the store (%d paths counted), more than the limit of %d: %w",
			r.whatIsCounted(), r.wantBytes, len(r.pending), o.MaxNarBytes, ErrTooLarge)
	}
	return nil
}

// whatIsCounted names, for a too-large error, the closure being counted.
// Called with r.mu held.
func (r *run) whatIsCounted() string {
	if r.counted == 0 {
		return "the closure of " + storepath.Describe(r.roots)
	}
	return fmt.Sprintf("the closure of %s together with the %d other paths it is counted with (%s)",
		storepath.Describe(r.roots), len(r.f.opts.BoundAlso), storepath.Describe(r.f.opts.BoundAlso))
}

// walk walks the closure a depth level at a time: the narinfos of one
// level are requested concurrently, and (without a bound) each path's
// download starts as soon as its narinfo is verified. countOnly: the
// paths are only counted against the bound (Options.BoundAlso), and a
// path no cache can provide is left out rather than failing the run.
func (r *run) walk(roots []storepath.Path, countOnly bool) {
	seen := r.seen
	var level []*item
	valid, err := r.f.store.ValidSubset(r.ctx, roots)
	if err != nil {
		r.fail(err)
		return
	}
	for _, p := range roots {
		if seen[p] {
			continue
		}
		seen[p] = true
		if !valid[p] {
			level = append(level, &item{path: p, countOnly: countOnly})
		}
	}
	lookups := make(chan struct{}, r.f.opts.LookupJobs)
	for len(level) > 0 && r.ctx.Err() == nil {
		// The paths of this level queue for download slots as their
		// lookups end; hold the slots until all have (or for maxHold at
		// most, for a slow lookup), so that the largest start first.
		r.jobs.hold()
		holding := time.AfterFunc(maxHold, r.jobs.resume)
		var wg sync.WaitGroup
		for _, it := range level {
			wg.Add(1)
			lookups <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-lookups }()
				if err := r.lookup(it); err != nil {
					if countOnly && r.ctx.Err() == nil {
						return // not counted; its own fetch reports it
					}
					r.fail(err)
					return
				}
				if r.bounded() {
					if err := r.count(it); err != nil {
						r.fail(err)
					}
					return
				}
				r.startDownload(it)
			}()
		}
		wg.Wait()
		holding.Stop()
		r.jobs.resume()
		if r.ctx.Err() != nil {
			return
		}
		var next []*item
		var nextPaths []storepath.Path
		for _, it := range level {
			if it.ni == nil {
				continue // countOnly and not found
			}
			for _, ref := range it.ni.References {
				if !seen[ref] {
					seen[ref] = true
					next = append(next, &item{path: ref, neededBy: it.path, countOnly: countOnly})
					nextPaths = append(nextPaths, ref)
				}
			}
		}
		if len(nextPaths) == 0 {
			return
		}
		if err := r.f.store.AddTempRoots(r.ctx, nextPaths...); err != nil {
			r.fail(err)
			return
		}
		valid, err := r.f.store.ValidSubset(r.ctx, nextPaths)
		if err != nil {
			r.fail(err)
			return
		}
		level = level[:0:0]
		woke := false
		for _, it := range next {
			if valid[it.path] {
				r.mu.Lock()
				r.validBefore[it.path] = true
				r.mu.Unlock()
				woke = true
			} else {
				level = append(level, it)
			}
		}
		if woke {
			// Paths already unpacked may have been waiting for exactly
			// these references: let the registrar look again now, not at
			// the next download (there may be none while it holds their
			// locks, and another fetcher waits on them).
			r.events <- event{}
		}
	}
}

// lookup finds it's narinfo in the first cache (by priority) that has it
// with a trusted signature.
func (r *run) lookup(it *item) error {
	var reasons []string
	var untrusted *PathError
	allNotFound := true
	// allUnavailable: every cache that did not answer "not found" failed
	// through its retries; the path may be there once one is back.
	allUnavailable := true
	for _, c := range r.caches {
		ni, err := c.NarInfo(r.ctx, it.path)
		switch {
		case errors.Is(err, ErrNotFound):
			reasons = append(reasons, c.URL+": not found")
			continue
		case err != nil:
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			allNotFound = false
			allUnavailable = allUnavailable && errors.Is(err, ErrUnavailable)
			reasons = append(reasons, c.URL+": "+err.Error())
			continue
		}
		if !c.Trusted {
			if err := ni.VerifySignatures(r.f.opts.TrustedKeys); err != nil {
				r.mu.Lock()
				r.progress.SignatureRefusals++
				r.mu.Unlock()
				r.report()
				reasons = append(reasons, c.URL+": "+err.Error())
				if untrusted == nil {
					untrusted = &PathError{Path: it.path, NeededBy: it.neededBy, Cache: c.URL,
						Err: err}
				}
				continue
			}
		}
		if !knownCompression(ni.Compression) {
			allNotFound, allUnavailable = false, false
			reasons = append(reasons, fmt.Sprintf("%s: unknown compression %q", c.URL, ni.Compression))
			continue
		}
		it.ni, it.cache = ni, c
		return nil
	}
	if untrusted != nil {
		return untrusted
	}
	if allNotFound {
		return &PathError{Path: it.path, NeededBy: it.neededBy, Err: fmt.Errorf("%w in any cache (%s)", ErrNotFound, strings.Join(reasons, "; "))}
	}
	err := fmt.Errorf("no cache could provide it (%s)", strings.Join(reasons, "; "))
	if allUnavailable {
		err = &kindError{kind: ErrUnavailable, msg: err.Error()}
	}
	return &PathError{Path: it.path, NeededBy: it.neededBy, Err: err}
}

// maxHold bounds how long the resolver holds the download slots while it
// looks up one level of the closure.
const maxHold = 100 * time.Millisecond

// bigNAR is the compressed size from which a NAR of a local cache counts
// as big for the slots (about 50 ms of a core to decode with xz): at most
// one big NAR per core is decoded at a time. For remote caches, where the
// network may be what limits a download, every slot may take a big NAR.
const bigNAR = 1 << 20

func (r *run) startDownload(it *item) {
	r.mu.Lock()
	r.progress.PathsTotal++
	if it.ni.FileSize > 0 {
		r.progress.BytesTotal += int64(it.ni.FileSize)
	} else {
		r.progress.BytesTotal += int64(it.ni.NarSize)
	}
	r.mu.Unlock()
	r.report()
	r.downloads.Add(1)
	// Lock and queue now, while the resolver holds the slots, unless
	// another holder has the lock: then download waits for it, without a
	// slot.
	lock, ok, err := r.f.store.LockPath(r.ctx, it.path, false)
	if err != nil {
		r.downloads.Done()
		r.fail(err)
		return
	}
	var w *waiter
	if ok {
		done, err := r.prepare(it, lock)
		if err != nil || done {
			r.downloads.Done()
			if err != nil {
				r.fail(err)
			}
			return
		}
		if r.peers == nil {
			// With peers, it queues once it knows where from: waiting
			// on another node must not hold a slot.
			w = r.enqueue(it)
		}
	}
	go func() {
		defer r.downloads.Done()
		if err := r.download(it, lock, w); err != nil {
			r.fail(err)
		}
	}()
}

// prepare checks, under it's lock, whether another process made it
// valid meanwhile: then the lock is released and the path is done. Else
// it clears what an earlier attempt may have left.
func (r *run) prepare(it *item, lock *store.PathLock) (done bool, err error) {
	tmp, err := r.f.store.PrepareInstall(r.ctx, it.path)
	if errors.Is(err, store.ErrAlreadyValid) {
		lock.Unlock()
		r.events <- event{it: it}
		r.pathDone(false)
		return true, nil
	}
	if err != nil {
		lock.Unlock()
		return false, err
	}
	it.tmp = tmp
	return false, nil
}

// enqueue makes it's NAR join the queue for a download slot.
func (r *run) enqueue(it *item) *waiter {
	size := int64(it.ni.FileSize)
	if size == 0 {
		size = int64(it.ni.NarSize)
	}
	return r.jobs.enqueue(size, it.cache.local() && size >= bigNAR)
}

// download unpacks it's NAR under a temporary name and hands it to the
// registrar. lock and w are it's lock and place in the queue for a slot,
// if startDownload got them; else download takes the lock (waiting
// without a download slot while another process has it) and, unless that
// process made the path valid, queues. With peers, it first learns from
// the path's owner where the NAR comes from, waiting without a slot while
// another node fetches it; a peer's NAR that fails is fetched upstream.
func (r *run) download(it *item, lock *store.PathLock, w *waiter) error {
	if lock == nil {
		var err error
		if lock, _, err = r.f.store.LockPath(r.ctx, it.path, true); err != nil {
			return err
		}
		if done, err := r.prepare(it, lock); err != nil || done {
			return err
		}
	}
	var src *peerSource
	if r.peers != nil {
		src = r.peers.decide(it)
	}
	if w == nil {
		w = r.enqueue(it)
	}
	if err := r.jobs.wait(r.ctx, w); err != nil {
		lock.Unlock()
		if r.peers != nil {
			r.peers.abandon(it.path)
		}
		return err
	}
	var tmp string
	var err error
	if src != nil {
		tmp, err = r.fetchFromPeer(it, src)
	}
	if src == nil || err != nil {
		tmp, err = r.fetchNar(it)
		if err != nil {
			tmp, err = r.fetchNarElsewhere(it, err)
		}
	}
	r.jobs.release(w)
	if err != nil {
		if r.peers != nil {
			r.peers.abandon(it.path)
		}
		lock.Unlock()
		if r.ctx.Err() != nil {
			return r.ctx.Err()
		}
		return &PathError{Path: it.path, NeededBy: it.neededBy, Cache: it.cache.URL, Err: err}
	}
	r.events <- event{it: it, tmp: tmp, lock: lock}
	return nil
}

// fetchNarElsewhere takes it's NAR from the other caches, in priority
// order, after the one its narinfo came from failed with first (the cache
// went away, lost the file, served bad bytes). Only a narinfo that
// describes the same NAR (NarHash, NarSize, References) is taken, with a
// trusted signature: the closure was walked, counted against the limits
// and locked with the first narinfo's references. It returns first, with
// what the others said, when none serves it.
func (r *run) fetchNarElsewhere(it *item, first error) (string, error) {
	var reasons []string
	for _, c := range r.caches {
		if r.ctx.Err() != nil || c == it.cache {
			continue
		}
		ni, err := c.NarInfo(r.ctx, it.path)
		switch {
		case err != nil:
			reasons = append(reasons, c.URL+": "+err.Error())
			continue
		case !c.Trusted && ni.VerifySignatures(r.f.opts.TrustedKeys) != nil:
			reasons = append(reasons, c.URL+": no trusted signature")
			continue
		case !knownCompression(ni.Compression):
			reasons = append(reasons, fmt.Sprintf("%s: unknown compression %q", c.URL, ni.Compression))
			continue
		case !sameNAR(ni, it.ni):
			reasons = append(reasons, c.URL+": its narinfo describes another NAR")
			continue
		}
		r.f.log.Warnf("%s: NAR from %s failed (%v); trying %s", it.path.Absolute(), it.cache.URL, first, c.URL)
		tmp, err := r.fetchNarFrom(it, ni, c)
		if err == nil {
			return tmp, nil
		}
		reasons = append(reasons, c.URL+": "+err.Error())
	}
	if len(reasons) == 0 {
		return "", first
	}
	return "", fmt.Errorf("%w (other caches: %s)", first, strings.Join(reasons, "; "))
}

// fetchNar downloads and unpacks it's NAR into it.tmp, retrying
// transient failures from the start. It returns the temporary directory
// holding the verified tree.
func (r *run) fetchNar(it *item) (string, error) { return r.fetchNarFrom(it, it.ni, it.cache) }

// fetchNarFrom is fetchNar from cache c, whose narinfo ni describes the
// same NAR as it.ni. The item is not changed: the walk reads it.ni
// meanwhile, and the path is registered with the narinfo it was
// resolved with.
func (r *run) fetchNarFrom(it *item, ni *narinfo.NarInfo, c *Cache) (string, error) {
	tmp := it.tmp
	policy := c.retryPolicy()
	_, err := retry(r.ctx, policy, func() (struct{}, error) {
		err := r.fetchNarOnce(ni, c, tmp)
		if err != nil {
			if rmErr := store.RemoveTree(tmp); rmErr != nil {
				return struct{}{}, errors.Join(err, rmErr)
			}
		}
		return struct{}{}, err
	})
	if err != nil {
		if errors.Is(err, ErrHashMismatch) || errors.Is(err, ErrTruncated) {
			r.mu.Lock()
			r.progress.HashRefusals++
			r.mu.Unlock()
			r.report()
		}
		return "", err
	}
	return tmp, nil
}

func (r *run) fetchNarOnce(ni *narinfo.NarInfo, c *Cache, tmp string) error {
	rc, err := c.open(r.ctx, ni.URL)
	if err != nil {
		return fmt.Errorf("NAR %s (URL in %s.narinfo): %w", ni.URL, ni.StorePath.HashPart(), err)
	}
	defer rc.Close()
	// The compressed file's FileHash is not checked: it is not signed (the
	// fingerprint covers the NAR's hash, checked below), so it proves
	// nothing, and hashing it costs a tenth of a fetch. Its size bounds the
	// download.
	file := &countingReader{r: rc, onRead: func(n int) { r.addBytes(c, n) }}
	if ni.FileSize > 0 {
		file.limit = int64(ni.FileSize)
	}
	var d io.Reader
	var release func()
	var local *localXZ
	if f, ok := rc.(*os.File); ok && ni.Compression == "xz" && xzCommand() != "" {
		if local, err = startLocalXZ(ni, f, file); err != nil {
			return err
		}
	}
	if local != nil {
		d, release = local.cmd, local.cmd.release
	} else if d, release, err = decompressor(ni.Compression, file); err != nil {
		if terr := file.failure(); terr != nil {
			return fmt.Errorf("%s: %w", ni.URL, terr)
		}
		return fmt.Errorf("%s: %w", ni.URL, err)
	}
	release = sync.OnceFunc(release)
	defer release()
	narStream := &countingReader{r: d, h: sha256.New(), limit: int64(ni.NarSize)}
	err = nar.Unpack(narStream, tmp)
	if local != nil {
		// xz has read its input to the end (it exits only then).
		local.update()
		file.eof = ni.FileSize > 0 && file.n >= int64(ni.FileSize)
	}
	if err != nil {
		// The decoder is stopped first: xz(1) reads the transport in a
		// goroutine of os/exec, done once xz has been waited for.
		release()
		if terr := file.failure(); terr != nil {
			// The transfer failed (a cut connection, a stall): that, not
			// how the decoder took the early end of its input, is what
			// happened, and it is worth retrying.
			return fmt.Errorf("%s: %w", ni.URL, terr)
		}
		if errors.Is(err, errTooLong) {
			return fmt.Errorf("%w: NAR is longer than its NarSize %d", ErrHashMismatch, ni.NarSize)
		}
		if narStream.n < int64(ni.NarSize) && (narStream.eof || file.eof) {
			// The whole file was read, or the decoder ended cleanly,
			// before NarSize bytes: the cache's NAR is short.
			return truncated(ni, narStream.n, err)
		}
		return fmt.Errorf("%s: %w", ni.URL, err)
	}
	if narStream.n < int64(ni.NarSize) {
		return truncated(ni, narStream.n, nil)
	}
	if narStream.n != int64(ni.NarSize) {
		return fmt.Errorf("%w: NAR has %d bytes, NarSize says %d", ErrHashMismatch, narStream.n, ni.NarSize)
	}
	var got narinfo.Hash
	narStream.h.Sum(got[:0])
	if got != ni.NarHash {
		return fmt.Errorf("%w: NAR hash is %s, narinfo says %s", ErrHashMismatch, got, ni.NarHash)
	}
	if ni.FileSize > 0 {
		// The decompressor may stop before the end of the file.
		if _, err := io.Copy(io.Discard, file); err != nil {
			if terr := file.failure(); terr != nil {
				return fmt.Errorf("%s: %w", ni.URL, terr)
			}
			if errors.Is(err, errTooLong) {
				return fmt.Errorf("%w: %s is longer than its FileSize %d", ErrHashMismatch, ni.URL, ni.FileSize)
			}
			return fmt.Errorf("%s: %w", ni.URL, err)
		}
		if file.n != int64(ni.FileSize) {
			return fmt.Errorf("%w: %s has %d bytes, FileSize says %d", ErrHashMismatch, ni.URL, file.n, ni.FileSize)
		}
	}
	return nil
}

// localXZ decodes an xz NAR of a local cache: xz reads the file itself,
// with no pipe and no goroutine between. The file's size is checked
// against FileSize before, and its offset (shared with xz) counts what xz
// has read, for progress and for the FileSize check after.
type localXZ struct {
	cmd  *cmdReader
	f    *os.File
	file *countingReader
}

// startLocalXZ starts xz on f, or returns nil if f is not a regular file.
func startLocalXZ(ni *narinfo.NarInfo, f *os.File, file *countingReader) (*localXZ, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ni.URL, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil
	}
	if ni.FileSize > 0 && fi.Size() != int64(ni.FileSize) {
		return nil, fmt.Errorf("%w: %s has %d bytes, FileSize says %d", ErrHashMismatch, ni.URL, fi.Size(), ni.FileSize)
	}
	l := &localXZ{f: f, file: file}
	if l.cmd, err = execDecoder(xzCommand(), nil, f); err != nil {
		return nil, fmt.Errorf("%s: %w", ni.URL, err)
	}
	l.cmd.onRead = l.update
	return l, nil
}

// update counts the bytes xz has read by now.
func (l *localXZ) update() {
	off, err := l.f.Seek(0, io.SeekCurrent)
	if err != nil || off <= l.file.n {
		return
	}
	n := off - l.file.n
	l.file.n = off
	if l.file.onRead != nil {
		l.file.onRead(int(n))
	}
}

// truncated is the error of a NAR of n bytes, fewer than ni's NarSize,
// whose end was not a failed transfer; cause is the decoder's or the
// unpacker's complaint about the early end, if any.
func truncated(ni *narinfo.NarInfo, n int64, cause error) error {
	msg := fmt.Sprintf("NAR %s is shorter than its NarSize %d: got %d bytes", ni.URL, ni.NarSize, n)
	if cause != nil {
		msg += " (" + cause.Error() + ")"
	}
	return &kindError{kind: ErrTruncated, msg: msg}
}

var errTooLong = errors.New("stream longer than announced")

// countingReader counts and optionally hashes what passes, and refuses to
// deliver more than limit bytes (0: no limit): the cut that stops a
// decompression bomb at the size the signed narinfo announced. It keeps
// how its source ended: cleanly (eof) or with an error (failure), so
// that a failed transfer is told apart from a decoder's reading of it.
type countingReader struct {
	r      io.Reader
	h      hash.Hash
	n      int64
	limit  int64
	onRead func(int)

	mu  sync.Mutex // err: written by os/exec's goroutine feeding xz(1)
	err error
	eof bool
}

// failure is the first error the source returned, nil if none.
func (c *countingReader) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.limit > 0 {
		if c.n >= c.limit {
			var one [1]byte
			if n, _ := io.ReadFull(c.r, one[:]); n > 0 {
				return 0, errTooLong
			}
			return 0, io.EOF
		}
		if rest := c.limit - c.n; int64(len(p)) > rest {
			p = p[:rest]
		}
	}
	n, err := c.r.Read(p)
	switch {
	case err == io.EOF:
		c.eof = true
	case err != nil:
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
	}
	c.n += int64(n)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	if c.onRead != nil && n > 0 {
		c.onRead(n)
	}
	return n, err
}

func (r *run) addBytes(c *Cache, n int) {
	r.downloaded.Add(int64(n))
	r.mu.Lock()
	r.progress.BytesDone += int64(n)
	if c.peer {
		r.progress.PeerBytes += int64(n)
	} else {
		r.progress.UpstreamBytes += int64(n)
	}
	if r.progress.CacheBytes == nil {
		r.progress.CacheBytes = map[string]int64{}
	}
	r.progress.CacheBytes[c.URL] += int64(n)
	r.mu.Unlock()
	r.report()
}

func (r *run) pathDone(fetched bool) {
	r.mu.Lock()
	r.progress.PathsDone++
	if fetched {
		r.progress.PathsFetched++
	}
	r.mu.Unlock()
	r.report()
}

func (r *run) report() {
	if r.progressFn == nil {
		return
	}
	r.mu.Lock()
	p := r.progress
	p.CacheBytes = maps.Clone(p.CacheBytes)
	r.mu.Unlock()
	r.progressFn(p)
}

// registrar makes unpacked paths visible and valid, references first: a
// path is renamed into place and registered in the same batch as, or after,
// every path it references. Locks are released only once a path is valid,
// so a concurrent fetcher that waited on the lock finds it valid.
func (r *run) registrar() {
	known := func(p storepath.Path) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.validBefore[p]
	}
	validNow := map[storepath.Path]bool{}
	pending := map[storepath.Path]event{}
	for ev := range r.events {
		r.take(ev, validNow, pending)
	drain:
		for {
			select {
			case ev, ok := <-r.events:
				if !ok {
					break drain
				}
				r.take(ev, validNow, pending)
			default:
				break drain
			}
		}
		r.registerReady(validNow, pending, known)
	}
	r.registerReady(validNow, pending, known)
	// Whatever is left lost a reference to a failure: drop it.
	for _, ev := range pending {
		store.RemoveTree(ev.tmp)
		ev.lock.Unlock()
	}
}

func (r *run) take(ev event, validNow map[storepath.Path]bool, pending map[storepath.Path]event) {
	if ev.it == nil {
		return // a wake-up: references became known
	}
	if ev.tmp == "" {
		validNow[ev.it.path] = true
		return
	}
	pending[ev.it.path] = ev
}

func (r *run) registerReady(validNow map[storepath.Path]bool, pending map[storepath.Path]event, known func(storepath.Path) bool) {
	if len(pending) == 0 {
		return
	}
	// Grow the batch to a fixpoint: a path joins once all its references
	// are valid or already in the batch.
	batch := map[storepath.Path]bool{}
	for changed := true; changed; {
		changed = false
		for p, ev := range pending {
			if batch[p] {
				continue
			}
			ready := true
			for _, ref := range ev.it.ni.References {
				if ref != p && !validNow[ref] && !batch[ref] && !known(ref) {
					ready = false
					break
				}
			}
			if ready {
				batch[p] = true
				changed = true
			}
		}
	}
	if len(batch) == 0 {
		return
	}
	now := time.Now()
	var infos []store.PathInfo
	var committed []event
	for p := range batch {
		ev := pending[p]
		delete(pending, p)
		if err := r.f.store.CommitInstall(ev.tmp, p); err != nil {
			r.fail(&PathError{Path: p, Err: err})
			store.RemoveTree(ev.tmp)
			ev.lock.Unlock()
			continue
		}
		committed = append(committed, ev)
		ni := ev.it.ni
		infos = append(infos, store.PathInfo{
			Path: p, NarHash: ni.NarHash, NarSize: ni.NarSize, References: ni.References,
			Deriver: ni.Deriver, Sigs: ni.Sigs, CA: ni.CA, RegistrationTime: now,
		})
	}
	// Durable before valid: the batch's data and renames reach the disk
	// before the transaction that registers them, so a power cut never
	// leaves a registered path incomplete. (The commit itself may be lost:
	// the paths are then invalid, and the next fetch replaces them.)
	var err error
	if len(committed) > 0 {
		err = r.f.store.Sync()
	}
	if err == nil {
		err = r.f.store.Register(context.WithoutCancel(r.ctx), infos)
	}
	if err == nil && r.peers != nil {
		paths := make([]storepath.Path, len(committed))
		for i, ev := range committed {
			paths[i] = ev.it.path
		}
		r.peers.registered(paths)
	}
	for _, ev := range committed {
		if err != nil {
			// Not registered: the renamed tree is an invalid path; remove it
			// so nothing half-done stays visible.
			store.RemoveTree(r.f.store.RealPath(ev.it.path))
		} else {
			validNow[ev.it.path] = true
			r.mu.Lock()
			r.fetched = append(r.fetched, ev.it.path)
			r.mu.Unlock()
		}
		ev.lock.Unlock()
		if err == nil {
			r.pathDone(true)
		}
	}
	if err != nil {
		r.fail(fmt.Errorf("registering %d paths: %w", len(committed), err))
	}
}

// sameNAR reports whether two narinfos describe the same NAR: its hash,
// size and references (the signed facts; where and how compressed may
// differ).
func sameNAR(a, b *narinfo.NarInfo) bool {
	return a.NarHash == b.NarHash && a.NarSize == b.NarSize && slices.Equal(a.References, b.References)
}
