package shim

// Fetch records: for every closure fetch the shim writes a small JSON
// file (pkg/fetchrecord) into the node's record directory (StatusDir in
// the node configuration), so the node agent can count substitutions,
// bytes per cache and refusals, and tell users through pod events what
// their pod is waiting for.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// CRI's sandbox metadata, set on the sandbox's spec and every container's.
const (
	criSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	criSandboxName      = "io.kubernetes.cri.sandbox-name"
	criSandboxUID       = "io.kubernetes.cri.sandbox-uid"
)

// recordFlushInterval is how often a running fetch's record is rewritten
// when it made progress; a fetch that ends sooner writes one record.
const recordFlushInterval = time.Second

// podRef is the pod this shim serves.
type podRef struct {
	pod       fetchrecord.Pod
	sandboxID string
}

func podFromAnnotations(a map[string]string) podRef {
	return podRef{
		pod:       fetchrecord.Pod{Namespace: a[criSandboxNamespace], Name: a[criSandboxName], UID: a[criSandboxUID]},
		sandboxID: a[criSandboxID],
	}
}

// notePod remembers the pod from the first spec that names it.
func (c *core) notePod(annotations map[string]string) {
	p := podFromAnnotations(annotations)
	if p.pod == (fetchrecord.Pod{}) && p.sandboxID == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pod == (podRef{}) {
		c.pod = p
	}
}

// recordWriter writes this shim's records.
type recordWriter struct {
	dir  string
	self procid.ID
	seq  atomic.Int64
	full atomic.Bool // logged once: the directory is full
}

func newRecordWriter(dir string) *recordWriter {
	if dir == "-" {
		return nil
	}
	if dir == "" {
		dir = fetchrecord.DefaultDir
	}
	return &recordWriter{dir: dir, self: procid.Self()}
}

// liveRecord is the record of one fetchCall, rewritten while it runs.
// Its methods are safe on a nil receiver (no records written).
type liveRecord struct {
	writer *recordWriter
	log    *log.Entry

	mu      sync.Mutex
	rec     fetchrecord.Record
	dirty   bool
	written time.Time // last write; zero before the first
	off     bool      // not written (directory full)
	failed  bool      // a write failed (logged once)

	stop chan struct{}
	done chan struct{}
}

// start prepares the record of a fetch of paths for pod; it is
// written once the fetch has run for recordFlushInterval, or when it ends.
func (r *recordWriter) start(ctx context.Context, pod podRef, paths []storepath.Path) *liveRecord {
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
	s := &liveRecord{
		writer: r,
		log:    log.G(ctx).WithField("component", "storepkg-status"),
		rec: fetchrecord.Record{
			ID:        fmt.Sprintf("%s-%d-%d", prefix, r.self.PID, r.seq.Add(1)),
			Pod:       pod.pod,
			SandboxID: pod.sandboxID,
			Roots:     roots,
			State:     fetchrecord.Fetching,
			Writer:    r.self,
			Start:     now,
			Updated:   now,
		},
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if n, err := fetchrecord.Count(r.dir); err == nil && n >= fetchrecord.MaxRecords {
		s.off = true
		if !r.full.Swap(true) {
			s.log.WithField("dir", r.dir).Warnf("storepkg: %d fetch status records wait to be read (is the node agent running?); writing no more", n)
		}
	}
	go s.loop()
	return s
}

// progressFunc returns the callback for the fetch child's progress.
func (s *liveRecord) progressFunc() func(fetchapi.Progress) {
	if s == nil {
		return nil
	}
	return s.progress
}

// waitingFunc returns the callback for a fetch that waits for a slot.
func (s *liveRecord) waitingFunc() func(fetchapi.Waiting) {
	if s == nil {
		return nil
	}
	return s.waiting
}

func (s *liveRecord) waiting(w fetchapi.Waiting) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec.WaitingForSlot = max(w.Slots, 1)
	s.dirty = true
}

func (s *liveRecord) progress(p fetchapi.Progress) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec.WaitingForSlot = 0
	s.rec.Paths.Total, s.rec.Paths.Done, s.rec.Paths.Fetched = p.PathsTotal, p.PathsDone, p.PathsFetched
	s.rec.Bytes = fetchrecord.Bytes{Total: p.BytesTotal, Done: p.BytesDone}
	s.rec.Caches = p.CacheBytes
	s.rec.Refusals = fetchrecord.Refusals{Signature: p.SignatureRefusals, Hash: p.HashRefusals}
	s.dirty = true
}

// loop rewrites the record while the fetch runs: after the first
// interval, then whenever it progressed, and at least every heartbeat.
func (s *liveRecord) loop() {
	defer close(s.done)
	t := time.NewTicker(recordFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			if s.written.IsZero() || s.dirty || now.Sub(s.written) >= fetchrecord.HeartbeatInterval/2 {
				s.writeLocked(now)
			}
			s.mu.Unlock()
		}
	}
}

// finish writes the final record.
func (s *liveRecord) finish(res *fetchapi.Result, err error) {
	if s == nil {
		return
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.rec.End = now
	s.rec.WaitingForSlot = 0
	if err != nil {
		s.rec.State = fetchrecord.Failed
		f := &fetchapi.Failure{Message: err.Error(), Kind: fetchapi.KindOther}
		var fe *fetchapi.Failure
		if errors.As(err, &fe) {
			f.Kind, f.Path, f.Cache = fe.Kind, fe.Path, fe.Cache
		}
		s.rec.Error = f
	} else {
		s.rec.State = fetchrecord.Done
		s.rec.Paths.Closure = len(res.Closure)
		s.rec.Paths.Fetched = len(res.Fetched)
		if res.CacheBytes != nil {
			s.rec.Caches = res.CacheBytes
		}
	}
	s.writeLocked(now)
}

func (s *liveRecord) writeLocked(now time.Time) {
	if s.off {
		return
	}
	s.rec.Updated = now
	if err := fetchrecord.Write(s.writer.dir, &s.rec); err != nil {
		if !s.failed {
			s.log.WithError(err).Warn("storepkg: writing fetch status")
			s.failed = true
		}
		return
	}
	s.written, s.dirty = now, false
}
