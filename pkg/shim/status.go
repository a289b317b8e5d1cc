package shim

// Status records: for every closure fetch the shim writes a small JSON
// file (pkg/fetchstatus) into the node's status directory, so the node
// agent can count substitutions, bytes per cache and refusals, and tell
// users through pod events what their pod is waiting for.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchstatus"
	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// CRI's sandbox metadata, set on the sandbox's spec and every container's.
const (
	criSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	criSandboxName      = "io.kubernetes.cri.sandbox-name"
	criSandboxUID       = "io.kubernetes.cri.sandbox-uid"
)

// statusFlushInterval is how often a running fetch's record is rewritten
// when it made progress; a fetch that ends sooner writes one record.
const statusFlushInterval = time.Second

// podRef is the pod this shim serves.
type podRef struct {
	pod       fetchstatus.Pod
	sandboxID string
}

func podFromAnnotations(a map[string]string) podRef {
	return podRef{
		pod:       fetchstatus.Pod{Namespace: a[criSandboxNamespace], Name: a[criSandboxName], UID: a[criSandboxUID]},
		sandboxID: a[criSandboxID],
	}
}

// notePod remembers the pod from the first spec that names it.
func (c *core) notePod(annotations map[string]string) {
	p := podFromAnnotations(annotations)
	if p.pod == (fetchstatus.Pod{}) && p.sandboxID == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pod == (podRef{}) {
		c.pod = p
	}
}

// statusReporter writes this shim's records.
type statusReporter struct {
	dir  string
	self procid.ID
	seq  atomic.Int64
	full atomic.Bool // logged once: the directory is full
}

func newStatusReporter(dir string) *statusReporter {
	if dir == "-" {
		return nil
	}
	if dir == "" {
		dir = fetchstatus.DefaultDir
	}
	return &statusReporter{dir: dir, self: procid.Self()}
}

// fetchStatus is the record of one fetchCall. Its methods are safe on a
// nil receiver (status reporting off).
type fetchStatus struct {
	rep *statusReporter
	log *log.Entry

	mu      sync.Mutex
	rec     fetchstatus.Record
	dirty   bool
	written time.Time // last write; zero before the first
	off     bool      // not written (directory full)
	failed  bool      // a write failed (logged once)

	stop chan struct{}
	done chan struct{}
}

// newFetchStatus prepares the record of a fetch of paths for pod; it is
// written once the fetch has run for statusFlushInterval, or when it ends.
func (r *statusReporter) newFetchStatus(ctx context.Context, pod podRef, paths []storepath.Path) *fetchStatus {
	if r == nil {
		return nil
	}
	prefix := pod.sandboxID
	if len(prefix) > 12 {
		prefix = prefix[:12]
	}
	if prefix == "" {
		prefix = "shim"
	}
	roots := make([]string, len(paths))
	for i, p := range paths {
		roots[i] = p.Absolute()
	}
	now := time.Now()
	s := &fetchStatus{
		rep: r,
		log: log.G(ctx).WithField("component", "storepkg-status"),
		rec: fetchstatus.Record{
			ID:        fmt.Sprintf("%s-%d-%d", prefix, r.self.PID, r.seq.Add(1)),
			Pod:       pod.pod,
			SandboxID: pod.sandboxID,
			Roots:     roots,
			State:     fetchstatus.Fetching,
			Writer:    r.self,
			Start:     now,
			Updated:   now,
		},
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if n, err := fetchstatus.Count(r.dir); err == nil && n >= fetchstatus.MaxRecords {
		s.off = true
		if !r.full.Swap(true) {
			s.log.WithField("dir", r.dir).Warnf("storepkg: %d fetch status records wait to be read (is the node agent running?); writing no more", n)
		}
	}
	go s.loop()
	return s
}

// progressFunc returns the callback for the fetch child's progress.
func (s *fetchStatus) progressFunc() func(fetchapi.Progress) {
	if s == nil {
		return nil
	}
	return s.progress
}

func (s *fetchStatus) progress(p fetchapi.Progress) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec.Paths.Total, s.rec.Paths.Done, s.rec.Paths.Fetched = p.PathsTotal, p.PathsDone, p.PathsFetched
	s.rec.Bytes = fetchstatus.Bytes{Total: p.BytesTotal, Done: p.BytesDone}
	s.rec.Caches = p.CacheBytes
	s.rec.Refusals = fetchstatus.Refusals{Signature: p.SignatureRefusals, Hash: p.HashRefusals}
	s.dirty = true
}

// loop rewrites the record while the fetch runs: after the first
// interval, then whenever it progressed, and at least every heartbeat.
func (s *fetchStatus) loop() {
	defer close(s.done)
	t := time.NewTicker(statusFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			if s.written.IsZero() || s.dirty || now.Sub(s.written) >= fetchstatus.HeartbeatInterval/2 {
				s.writeLocked(now)
			}
			s.mu.Unlock()
		}
	}
}

// finish writes the final record.
func (s *fetchStatus) finish(res *fetchapi.Result, err error) {
	if s == nil {
		return
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.rec.End = now
	if err != nil {
		s.rec.State = fetchstatus.Failed
		f := &fetchapi.Failure{Message: err.Error(), Kind: fetchapi.KindOther}
		var fe *fetchapi.Failure
		if errors.As(err, &fe) {
			f.Kind, f.Path, f.Cache = fe.Kind, fe.Path, fe.Cache
		}
		s.rec.Error = f
	} else {
		s.rec.State = fetchstatus.Done
		s.rec.Paths.Closure = len(res.Closure)
		s.rec.Paths.Fetched = len(res.Fetched)
		if res.CacheBytes != nil {
			s.rec.Caches = res.CacheBytes
		}
	}
	s.writeLocked(now)
}

func (s *fetchStatus) writeLocked(now time.Time) {
	if s.off {
		return
	}
	s.rec.Updated = now
	if err := fetchstatus.Write(s.rep.dir, &s.rec); err != nil {
		if !s.failed {
			s.log.WithError(err).Warn("storepkg: writing fetch status")
			s.failed = true
		}
		return
	}
	s.written, s.dirty = now, false
}
