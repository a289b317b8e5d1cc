package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
)

const (
	// consumedMemory is how long a consumed record's ID is remembered
	// after its file was last seen, so a record that reappears (a writer
	// thought dead wrote again) is not counted twice.
	consumedMemory = time.Hour
	// staleTemporary is when a writer's temporary file counts as left
	// behind by a dead writer.
	staleTemporary = 10 * time.Minute
	// eventMaxAge: records that ended longer ago than this (found after
	// an agent restart) are counted but get no events.
	eventMaxAge = 10 * time.Minute
)

// recordWatcher reads the shims' fetch records (pkg/fetchrecord) in the
// status directory: it counts every completed record once, expires
// records of dead writers, posts pod events, and keeps the directory
// small by removing what it consumed. A record is read again only when
// its file changed, so a poll of a quiet directory costs one readdir and
// one lstat per record.
type recordWatcher struct {
	a        *Agent
	dir      string
	tracked  map[string]*trackedRecord
	consumed map[string]time.Time
	missing  bool // the directory did not exist at the last poll (logged once)
}

type trackedRecord struct {
	mod        time.Time
	size       int64
	rec        *fetchrecord.Record
	slowPosted time.Time // last StorepkgFetching event
	slowMsg    string
	running    bool // counted in fetches_in_progress by the last poll
}

// settle takes a record the last poll counted as running out of the
// gauge before its completion is counted, so no scrape sees a fetch both
// finished and in progress.
func (w *recordWatcher) settle(t *trackedRecord) {
	if t.running {
		w.a.metrics.fetchesRunning.Dec()
		t.running = false
	}
}

func newRecordWatcher(a *Agent) *recordWatcher {
	return &recordWatcher{a: a, dir: a.cfg.StatusDir, tracked: map[string]*trackedRecord{}, consumed: map[string]time.Time{}}
}

func (w *recordWatcher) poll(ctx context.Context, now time.Time) {
	f, err := os.Open(w.dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if !w.missing {
				w.a.log.WithField("dir", w.dir).Info("no fetch status directory yet (no shim has written a record)")
			}
			w.missing = true
		} else {
			w.a.log.WithError(err).Warn("reading the fetch status directory")
		}
		w.a.metrics.fetchesRunning.Set(0)
		return
	}
	w.missing = false
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		w.a.log.WithError(err).Warn("reading the fetch status directory")
		return
	}
	seen := make(map[string]bool, len(names))
	running := 0
	for _, name := range names {
		if ctx.Err() != nil {
			return
		}
		file := filepath.Join(w.dir, name)
		id, ok := fetchrecord.IDOf(name)
		if !ok {
			w.sweepOther(name, file, now)
			continue
		}
		seen[id] = true
		if _, done := w.consumed[id]; done {
			w.consumed[id] = now
			os.Remove(file)
			continue
		}
		t, ok := w.load(id, file)
		if !ok {
			continue
		}
		rec := t.rec
		if !rec.Completed() {
			if why := w.expired(rec, now); why != "" {
				expired := *rec
				expired.State = fetchrecord.Failed
				expired.End = rec.Updated
				expired.Error = &fetchapi.Failure{Kind: fetchapi.KindAborted,
					Message: fmt.Sprintf("fetching the closure of %s stopped: %s", describeRoots(rec.Roots), why)}
				t.rec = &expired
				w.settle(t)
				w.complete(id, file, t, now)
				continue
			}
			running++
			t.running = true
			w.progressEvent(id, t, now)
			continue
		}
		w.settle(t)
		w.complete(id, file, t, now)
	}
	for id := range w.tracked {
		if !seen[id] {
			delete(w.tracked, id)
		}
	}
	for id, at := range w.consumed {
		if now.Sub(at) > consumedMemory {
			delete(w.consumed, id)
		}
	}
	w.a.metrics.fetchesRunning.Set(float64(running))
}

// load returns the record of file, read again only if the file changed.
func (w *recordWatcher) load(id, file string) (*trackedRecord, bool) {
	fi, err := os.Lstat(file)
	if err != nil {
		return nil, false // replaced or removed meanwhile
	}
	t := w.tracked[id]
	if t != nil && fi.ModTime().Equal(t.mod) && fi.Size() == t.size {
		return t, true
	}
	rec, err := fetchrecord.Read(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false
		}
		// Writers replace records atomically: a bad one stays bad.
		w.a.log.WithError(err).WithField("file", file).Warn("removing an unreadable fetch status record")
		os.Remove(file)
		w.a.metrics.recordsDiscarded.WithLabelValues("unreadable").Inc()
		delete(w.tracked, id)
		return nil, false
	}
	if t == nil {
		t = &trackedRecord{}
		w.tracked[id] = t
	}
	t.mod, t.size, t.rec = fi.ModTime(), fi.Size(), rec
	return t, true
}

// sweepOther removes writers' temporary files left by dead writers.
func (w *recordWatcher) sweepOther(name, file string, now time.Time) {
	if !strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".tmp") {
		return
	}
	fi, err := os.Lstat(file)
	if err == nil && now.Sub(fi.ModTime()) > staleTemporary {
		os.Remove(file)
		w.a.metrics.recordsDiscarded.WithLabelValues("stale_temporary").Inc()
	}
}

// expired says why a running fetch's record is dead, or "".
func (w *recordWatcher) expired(rec *fetchrecord.Record, now time.Time) string {
	alive, known := rec.Writer.Alive()
	if known {
		if alive {
			return ""
		}
		return fmt.Sprintf("its shim (pid %d) exited", rec.Writer.PID)
	}
	if idle := now.Sub(rec.Updated); idle > w.a.cfg.StaleAfter {
		return fmt.Sprintf("its shim (pid %d in another PID namespace) has not reported for %s", rec.Writer.PID, idle.Round(time.Second))
	}
	return ""
}

// complete counts a completed record, posts its event and removes it.
func (w *recordWatcher) complete(id, file string, t *trackedRecord, now time.Time) {
	rec := t.rec
	w.a.metrics.countCompleted(rec)
	l := w.a.log.WithFields(logrus.Fields{
		"pod": rec.Pod.Namespace + "/" + rec.Pod.Name, "podUID": rec.Pod.UID, "roots": rec.Roots,
		"paths": rec.Paths.Total, "fetched": rec.Paths.Fetched, "bytes": rec.Bytes.Done,
		"duration": rec.Duration().Round(time.Millisecond).String(), "record": id,
	})
	if peer, upstream := bytesBySource(rec); peer > 0 {
		l = l.WithFields(logrus.Fields{"peerBytes": peer, "upstreamBytes": upstream})
	}
	recent := now.Sub(rec.End) <= eventMaxAge
	if rec.State == fetchrecord.Failed {
		msg := "?"
		if rec.Error != nil {
			msg = rec.Error.Message
			l = l.WithField("reason", rec.Error.Kind)
		}
		l.WithField("error", msg).Warn("pod's closure fetch failed")
		if recent {
			w.a.postEvent(PodEvent{Pod: rec.Pod, Type: corev1.EventTypeWarning, Reason: ReasonFetchFailed,
				Message: failedMessage(rec), Time: now})
		}
	} else {
		l.Info("pod's closure ready")
		if recent && (!t.slowPosted.IsZero() || rec.Duration() >= w.a.cfg.SlowFetchAfter) {
			w.a.postEvent(PodEvent{Pod: rec.Pod, Type: corev1.EventTypeNormal, Reason: ReasonFetched,
				Message: fetchedMessage(rec), Series: id, Time: now})
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		l.WithError(err).Warn("removing a consumed fetch status record")
	}
	w.consumed[id] = now
	delete(w.tracked, id)
}

// progressEvent posts, then updates, the event of a slow fetch.
func (w *recordWatcher) progressEvent(id string, t *trackedRecord, now time.Time) {
	rec := t.rec
	if now.Sub(rec.Start) < w.a.cfg.SlowFetchAfter {
		return
	}
	if !t.slowPosted.IsZero() && now.Sub(t.slowPosted) < w.a.cfg.EventUpdateInterval {
		return
	}
	msg := fetchingMessage(rec)
	if msg == t.slowMsg {
		return
	}
	t.slowPosted, t.slowMsg = now, msg
	w.a.postEvent(PodEvent{Pod: rec.Pod, Type: corev1.EventTypeNormal, Reason: ReasonFetching,
		Message: msg, Series: id, Time: now})
}

// Event messages. They name the paths asked for, so `kubectl describe
// pod` says what the pod waits for.

func fetchingMessage(r *fetchrecord.Record) string {
	if r.WaitingForSlot > 0 {
		return fmt.Sprintf("waiting for a fetch slot for %s: the node runs at most %d closure fetches at once (runtime option MaxConcurrentFetches)", describeRoots(r.Roots), r.WaitingForSlot)
	}
	if r.Paths.Total == 0 {
		return fmt.Sprintf("looking up the closure of %s in the binary caches", describeRoots(r.Roots))
	}
	return fmt.Sprintf("fetching %s, %s/%s MB for %s", countPaths(r.Paths.Total), megabytes(r.Bytes.Done), megabytes(r.Bytes.Total), describeRoots(r.Roots))
}

// countPaths says "1 path", "2 paths".
func countPaths(n int) string {
	if n == 1 {
		return "1 path"
	}
	return fmt.Sprintf("%d paths", n)
}

func fetchedMessage(r *fetchrecord.Record) string {
	msg := fmt.Sprintf("fetched %s (%s MB) for %s in %s", countPaths(r.Paths.Fetched), megabytes(r.Bytes.Done), describeRoots(r.Roots), r.Duration().Round(100*time.Millisecond))
	if peer, upstream := bytesBySource(r); peer > 0 {
		msg += fmt.Sprintf(": %s MB from peers, %s MB from upstream", megabytes(peer), megabytes(upstream))
	}
	return msg
}

// bytesBySource sums a record's bytes per cache into those from peers and
// those from upstream caches.
func bytesBySource(r *fetchrecord.Record) (peer, upstream int64) {
	for cache, n := range r.Caches {
		if _, source := cacheSource(cache); source == sourcePeer {
			peer += n
		} else {
			upstream += n
		}
	}
	return peer, upstream
}

func failedMessage(r *fetchrecord.Record) string {
	msg := "unknown error"
	if r.Error != nil && r.Error.Message != "" {
		msg = r.Error.Message
	}
	switch {
	case r.Error != nil && r.Error.Kind == fetchapi.KindAborted:
		return msg
	case strings.HasPrefix(msg, "/nix/store/"): // the fetcher's errors name the path first
		return "cannot fetch " + msg
	}
	return fmt.Sprintf("cannot fetch the closure of %s: %s", describeRoots(r.Roots), msg)
}

func describeRoots(roots []string) string {
	switch len(roots) {
	case 0:
		return "no paths"
	case 1:
		return roots[0]
	}
	return fmt.Sprintf("%s and %d more", roots[0], len(roots)-1)
}

// megabytes formats bytes in MB (10^6), with a decimal below 10 MB.
func megabytes(b int64) string {
	mb := float64(b) / 1e6
	if mb < 10 {
		return fmt.Sprintf("%.1f", mb)
	}
	return fmt.Sprintf("%.0f", mb)
}
