// Package benchtest holds what `make bench` needs beyond internal/critest:
// HTTP servers that count what they serve (a Nix binary cache, an OCI
// registry from go-containerregistry's pkg/registry), OCI images whose
// layers hold store paths under /nix/store (zstd, as a Dockerfile or
// nix2container would lay them out), byte counts of directories, the
// memory of a process from /proc, and the moment a log file shows a line.
//
// Nothing here measures time by itself or asserts on it: the benchmarks
// in integration/ do, and report numbers, never pass/fail on timing.
package benchtest

import (
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
)

// Counter wraps an http.Handler and counts, per URL path, the GET requests
// and the response body bytes written.
type Counter struct {
	h  http.Handler
	mu sync.Mutex
	m  map[string]*Served
}

// Served is what one URL path was served.
type Served struct {
	Requests int
	Bytes    int64
}

// NewCounter wraps h.
func NewCounter(h http.Handler) *Counter {
	return &Counter{h: h, m: map[string]*Served{}}
}

func (c *Counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		c.h.ServeHTTP(w, r)
		return
	}
	cw := &countingWriter{ResponseWriter: w}
	c.h.ServeHTTP(cw, r)
	c.mu.Lock()
	s := c.m[r.URL.Path]
	if s == nil {
		s = &Served{}
		c.m[r.URL.Path] = s
	}
	s.Requests++
	s.Bytes += cw.n
	c.mu.Unlock()
}

// Reset forgets everything counted so far.
func (c *Counter) Reset() {
	c.mu.Lock()
	c.m = map[string]*Served{}
	c.mu.Unlock()
}

// Paths returns a copy of the counts by URL path.
func (c *Counter) Paths() map[string]Served {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]Served, len(c.m))
	for p, s := range c.m {
		out[p] = *s
	}
	return out
}

// Total sums the counts of the paths for which match returns true (nil:
// every path).
func (c *Counter) Total(match func(path string) bool) Served {
	var t Served
	for p, s := range c.Paths() {
		if match == nil || match(p) {
			t.Requests += s.Requests
			t.Bytes += s.Bytes
		}
	}
	return t
}

// Repeated lists the paths matching match that were served more than once.
func (c *Counter) Repeated(match func(path string) bool) []string {
	var out []string
	for p, s := range c.Paths() {
		if (match == nil || match(p)) && s.Requests > 1 {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// CacheServer is a Nix binary cache served over HTTP on 127.0.0.1, from
// one or more directories (the first that has a file wins), counting what
// it serves.
type CacheServer struct {
	URL string
	*Counter
}

// ServeCache serves the cache directories on 127.0.0.1 until the test ends.
func ServeCache(t testing.TB, dirs ...string) *CacheServer {
	t.Helper()
	var fs []http.Handler
	for _, d := range dirs {
		fs = append(fs, http.FileServer(http.Dir(d)))
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i, d := range dirs {
			if i == len(dirs)-1 || exists(d, r.URL.Path) {
				fs[i].ServeHTTP(w, r)
				return
			}
		}
	})
	c := NewCounter(h)
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return &CacheServer{URL: srv.URL, Counter: c}
}

// IsNAR tells whether a cache URL path is a NAR (not a narinfo or
// nix-cache-info).
func IsNAR(path string) bool { return strings.HasPrefix(path, "/nar/") }
