package agent

import (
	"context"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
)

const namespace = "storepkg"

// Label values.
const (
	resultSuccess = "success"
	resultFailure = "failure"
)

// metrics are the agent's Prometheus metrics, in their own registry.
type metrics struct {
	reg *prometheus.Registry

	fsSize, fsAvail     prometheus.Gauge
	fsUsage             prometheus.Gauge
	fetchesRunning      prometheus.Gauge
	fetches             *prometheus.CounterVec
	fetchFailures       *prometheus.CounterVec
	fetchDuration       *prometheus.HistogramVec
	substitutions       prometheus.Counter
	fetchedBytes        *prometheus.CounterVec
	refusals            *prometheus.CounterVec
	gcRuns              *prometheus.CounterVec
	gcFreed             prometheus.Counter
	gcDeleted           prometheus.Counter
	gcDuration          prometheus.Histogram
	gcLast              prometheus.Gauge
	gcUnresolved        prometheus.Gauge
	ownerRecordsInvalid prometheus.Gauge
	events              *prometheus.CounterVec
	recordsDiscarded    *prometheus.CounterVec
	peers               prometheus.Gauge
}

func newMetrics(st *store.Store) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	}
	m.fsSize = gauge("store_filesystem_size_bytes", "Size of the filesystem that holds the store.")
	m.fsAvail = gauge("store_filesystem_available_bytes", "Bytes available to unprivileged users on the store's filesystem.")
	m.fsUsage = gauge("store_filesystem_usage_ratio", "Used fraction of the store's filesystem (what the collection thresholds compare).")
	m.fetchesRunning = gauge("fetches_in_progress", "Closure fetches of pods that shims report running.")
	m.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "fetches_total",
		Help: "Closure fetches for pods that ended, by result (success, failure)."}, []string{"result"})
	m.fetchFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "fetch_failures_total",
		Help: "Failed closure fetches by reason (not_found, untrusted, hash_mismatch, truncated, unavailable, no_space, timeout, canceled, aborted, other; too_large once one occurs)."}, []string{"reason"})
	m.fetchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "fetch_duration_seconds",
		Help:    "How long pods' closure fetches took, by result.",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}, []string{"result"})
	m.substitutions = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "substitutions_total",
		Help: "Store paths downloaded from binary caches and made valid."})
	m.fetchedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "fetched_bytes_total",
		Help: "Compressed bytes downloaded, by cache (an upstream cache's URL, or \"peer\" for every peer) and source (upstream, peer)."}, []string{"cache", "source"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "refusals_total",
		Help: "What fetches refused from caches: narinfos without a trusted signature (signature), NARs that did not match their signed narinfo (hash)."}, []string{"kind"})
	m.gcRuns = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "gc_runs_total",
		Help: "Garbage collections by result (success, failure)."}, []string{"result"})
	m.gcFreed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "gc_freed_bytes_total",
		Help: "Bytes freed by garbage collection."})
	m.gcDeleted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "gc_deleted_paths_total",
		Help: "Valid store paths deleted by garbage collection."})
	m.gcDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "gc_duration_seconds",
		Help: "How long garbage collections took.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 9)})
	m.gcLast = gauge("gc_last_run_timestamp_seconds", "When the last garbage collection ended (Unix time).")
	m.ownerRecordsInvalid = gauge("gc_owner_records_invalid", "Owner records of shims' GC roots that the last sweep could not read (named in the agent's log); their roots are kept.")
	m.gcUnresolved = gauge("gc_unresolved_roots", "Possible GC roots the last collection could not resolve (named in the agent's log); while there are any, collections delete no valid path.")
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "pod_events_total",
		Help: "Pod events the agent posted, by reason and result (success, failure, dropped)."}, []string{"reason", "result"})
	m.recordsDiscarded = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "status_records_discarded_total",
		Help: "Fetch status files removed without counting, by cause (unreadable, stale_temporary)."}, []string{"cause"})
	m.peers = gauge("peers", "Nodes the peers file lists, this one included (0: no peers file).")

	m.reg.MustRegister(m.fsSize, m.fsAvail, m.fsUsage, m.fetchesRunning, m.fetches, m.fetchFailures, m.fetchDuration,
		m.substitutions, m.fetchedBytes, m.refusals, m.gcRuns, m.gcFreed, m.gcDeleted, m.gcDuration, m.gcLast, m.gcUnresolved, m.ownerRecordsInvalid,
		m.events, m.recordsDiscarded, m.peers,
		&storeCollector{st: st},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Series that exist from the start, so a dashboard sees zeros rather than nothing.
	for _, r := range []string{resultSuccess, resultFailure} {
		m.fetches.WithLabelValues(r)
		m.gcRuns.WithLabelValues(r)
	}
	for _, k := range []string{"signature", "hash"} {
		m.refusals.WithLabelValues(k)
	}
	for _, k := range []string{fetchapi.KindNotFound, fetchapi.KindUntrusted, fetchapi.KindHashMismatch, fetchapi.KindTruncated,
		fetchapi.KindUnavailable, fetchapi.KindNoSpace, fetchapi.KindTimeout, fetchapi.KindAborted, fetchapi.KindOther} {
		m.fetchFailures.WithLabelValues(k)
	}
	return m
}

// countCompleted adds a completed record to the counters.
func (m *metrics) countCompleted(r *fetchrecord.Record) {
	result := resultSuccess
	if r.State != fetchrecord.Done {
		result = resultFailure
		kind := fetchapi.KindOther
		if r.Error != nil && validKind(r.Error.Kind) {
			kind = r.Error.Kind
		}
		m.fetchFailures.WithLabelValues(kind).Inc()
	}
	m.fetches.WithLabelValues(result).Inc()
	m.fetchDuration.WithLabelValues(result).Observe(r.Duration().Seconds())
	if r.Paths.Fetched > 0 {
		m.substitutions.Add(float64(r.Paths.Fetched))
	}
	for cache, n := range r.Caches {
		if n > 0 {
			label, source := cacheSource(cache)
			m.fetchedBytes.WithLabelValues(label, source).Add(float64(n))
		}
	}
	if r.Refusals.Signature > 0 {
		m.refusals.WithLabelValues("signature").Add(float64(r.Refusals.Signature))
	}
	if r.Refusals.Hash > 0 {
		m.refusals.WithLabelValues("hash").Add(float64(r.Refusals.Hash))
	}
}

// validKind reports whether a failure kind from a record can be a label
// value as it is: a kind the agent does not know yet counts under its own
// name (fetchapi), but only if it looks like one, so that a record cannot
// put free text (a URL, a message) into the unauthenticated /metrics.
func validKind(kind string) bool {
	if kind == "" || len(kind) > 32 {
		return false
	}
	for _, c := range kind {
		if (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// cacheLabel names a cache in a label without its credentials, whatever
// the record says (the fetch child names caches redacted already; a
// record is only a file on the node): as fetchapi.RedactURL names it, and
// without query and fragment, which name no cache and may hold a token
// (a signed URL's signature).
func cacheLabel(cache string) string {
	u, err := url.Parse(cache)
	if err != nil || u.Opaque != "" {
		return fetchapi.RedactURL(cache)
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return fetchapi.RedactedURL(u)
}

// Sources of fetched bytes.
const (
	sourceUpstream = "upstream"
	sourcePeer     = "peer"
)

// cacheSource names a record's cache in the cache label, and says where
// its bytes came from. All peers share one label value, so the series
// do not grow with the cluster.
func cacheSource(cache string) (label, source string) {
	if strings.HasPrefix(cache, peer.CachePrefix) {
		return sourcePeer, sourcePeer
	}
	return cacheLabel(cache), sourceUpstream
}

// storeCollector reports the store's size from its database at each
// scrape: one query, no walk of the store directory.
type storeCollector struct {
	st *store.Store
}

var (
	storePathsDesc = prometheus.NewDesc(namespace+"_store_paths", "Valid paths in the node store.", nil, nil)
	storeBytesDesc = prometheus.NewDesc(namespace+"_store_bytes", "Sum of the NAR sizes of the valid paths in the node store.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storePathsDesc
	ch <- storeBytesDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, err := c.st.Usage(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(storePathsDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(storePathsDesc, prometheus.GaugeValue, float64(u.Paths))
	ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(u.NarBytes))
}
