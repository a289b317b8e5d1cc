// Package fetchapi is the vocabulary of a closure fetch, declared once
// for everyone who speaks about one: the fetcher (pkg/fetch) reports
// Progress and a Result or an error of one of the failure kinds;
// `storepkg fetch --json` writes them as JSON lines (Report, Reporter),
// which the shim reads from its fetch child (pkg/fetchexec); the shim's
// fetch records (pkg/fetchrecord) carry the Failure to the node agent,
// which counts failures by kind. Wherever it names a cache, it names it
// as RedactURL does.
//
// The JSON forms cross process and version boundaries on a node (a shim
// and the storepkg binary it runs, shims and the agent): keep them
// compatible. The package holds no fetcher, store, decoder or SQLite,
// so the shim links it at no cost.
package fetchapi

import (
	"encoding/json"
	"io"
	"sync"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// Kinds of fetch failure (Failure.Kind): pkg/fetch's ErrorKind names its
// errors with the first six and KindTooLarge, KindTruncated,
// KindUnavailable and KindNoSpace; the shim maps them to errdefs kinds
// and the agent counts failures by them. New kinds are added, never
// renamed: an older reader counts an unknown kind as is.
const (
	KindNotFound     = "not_found"     // no cache has a path
	KindUntrusted    = "untrusted"     // no trusted signature
	KindHashMismatch = "hash_mismatch" // a NAR differs from its signed narinfo
	KindTimeout      = "timeout"       // a deadline passed
	KindCanceled     = "canceled"      // the caller gave up
	KindOther        = "other"         // network, HTTP, disk, ...
	// KindInvalidArgument: the fetch child refused its request before
	// fetching anything.
	KindInvalidArgument = "invalid_argument"
	// KindTooLarge: the closure needs more NAR bytes or paths than the
	// node allows one fetch; refused before any NAR was downloaded.
	KindTooLarge = "too_large"
	// KindAborted: a record reader's kind for a fetch whose writer died
	// before it ended.
	KindAborted = "aborted"
	// KindTruncated: a NAR whose bytes (the cache's complete file,
	// decompressed) end before its signed NarSize.
	KindTruncated = "truncated"
	// KindUnavailable: the caches kept failing in a way worth retrying
	// (unreachable, HTTP 5xx or 429, a connection cut mid-file) until the
	// retries ran out.
	KindUnavailable = "unavailable"
	// KindNoSpace: the store's filesystem is full (ENOSPC, EDQUOT, or
	// SQLite's "database or disk is full") while unpacking or
	// registering.
	KindNoSpace = "no_space"
)

// Progress is a snapshot of one fetch.
type Progress struct {
	PathsTotal int `json:"pathsTotal"` // paths to download (not those already valid)
	// PathsDone also counts the paths another process made valid
	// meanwhile; PathsFetched only those this fetch downloaded and made
	// valid.
	PathsDone    int   `json:"pathsDone"`
	PathsFetched int   `json:"pathsFetched"`
	BytesTotal   int64 `json:"bytesTotal"` // compressed bytes (NAR bytes where a cache gives no size)
	BytesDone    int64 `json:"bytesDone"`
	// CacheBytes holds the compressed bytes read so far from each cache
	// (by URL; a peer as "peer:<node name>"); the map is the callee's
	// copy.
	CacheBytes map[string]int64 `json:"cacheBytes,omitempty"`
	// PeerBytes and UpstreamBytes split BytesDone: read from the
	// cluster's other nodes, and from the upstream caches.
	PeerBytes     int64 `json:"peerBytes,omitempty"`
	UpstreamBytes int64 `json:"upstreamBytes,omitempty"`
	// SignatureRefusals counts narinfos refused for want of a trusted
	// signature, HashRefusals NARs refused because size or hash differed
	// from their signed narinfo.
	SignatureRefusals int `json:"signatureRefusals,omitempty"`
	HashRefusals      int `json:"hashRefusals,omitempty"`
	// PeerFailures counts what peers cost this fetch: an owner that did
	// not answer a claim, a holder gone, hung or without the path, a
	// narinfo or NAR refused (also counted in HashRefusals). Each sent
	// a path upstream or to another holder.
	PeerFailures int `json:"peerFailures,omitempty"`
}

// Result is a completed fetch: the whole closure is valid.
type Result struct {
	Closure    []storepath.Path `json:"closure"`              // every path of the closure, sorted
	Fetched    []storepath.Path `json:"fetched"`              // the ones this fetch downloaded
	Downloaded int64            `json:"downloaded"`           // compressed bytes read from caches
	CacheBytes map[string]int64 `json:"cacheBytes,omitempty"` // Downloaded by cache URL ("peer:<node name>" for a peer)
	// PeerBytes and UpstreamBytes split Downloaded (compressed bytes)
	// between the cluster's other nodes and the upstream caches.
	PeerBytes     int64 `json:"peerBytes,omitempty"`
	UpstreamBytes int64 `json:"upstreamBytes,omitempty"`
	PeerFailures  int   `json:"peerFailures,omitempty"` // as Progress.PeerFailures
}

// Failure is a failed fetch. Message is what the user reads (path, cache
// and cause); Kind classifies it.
type Failure struct {
	Message string `json:"message"`
	Kind    string `json:"kind"`
	Path    string `json:"path,omitempty"`  // the store path that could not be fetched
	Cache   string `json:"cache,omitempty"` // the cache at fault, if one is
}

func (f *Failure) Error() string { return f.Message }

// Report is one line of `storepkg fetch --json`'s stdout: progress
// reports while it works, then exactly one result or error. Its stderr
// is its log.
type Report struct {
	Progress *Progress `json:"progress,omitempty"`
	Result   *Result   `json:"result,omitempty"`
	Error    *Failure  `json:"error,omitempty"`
	// Waiting: the fetch waits for one of the node's fetch slots
	// (pkg/fetchslot) before it downloads anything.
	Waiting *Waiting `json:"waiting,omitempty"`
	// NeedsFetch ends a fetch run with --only-if-valid whose closure is
	// not valid yet: it fetched nothing (its GC roots are made).
	NeedsFetch bool `json:"needsFetch,omitempty"`
}

// Waiting is a fetch queued for a slot.
type Waiting struct {
	Slots int `json:"slots"` // how many fetches the node runs at once
}

// CacheConfig is the caches a fetch may use, as `storepkg fetch
// --cache-config` reads it (the shim writes it to the child's stdin, so
// that credentials in substituter URLs never appear on a command line).
type CacheConfig struct {
	Substituters      []string `json:"substituters,omitempty"`
	TrustedPublicKeys []string `json:"trustedPublicKeys,omitempty"`
	NetrcFile         string   `json:"netrcFile,omitempty"`
}

// Reporter writes Reports, one per line, safely from several goroutines.
type Reporter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func NewReporter(w io.Writer) *Reporter { return &Reporter{enc: json.NewEncoder(w)} }

func (r *Reporter) write(rep *Report) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.enc.Encode(rep)
}

func (r *Reporter) Progress(p Progress) error { return r.write(&Report{Progress: &p}) }
func (r *Reporter) Result(res *Result) error  { return r.write(&Report{Result: res}) }
func (r *Reporter) Fail(f *Failure) error     { return r.write(&Report{Error: f}) }
func (r *Reporter) Waiting(w Waiting) error   { return r.write(&Report{Waiting: &w}) }
func (r *Reporter) NeedsFetch() error         { return r.write(&Report{NeedsFetch: true}) }
