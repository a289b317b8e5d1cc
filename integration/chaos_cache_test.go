package integration

// The chaos suite's binary cache: a real HTTP server on 127.0.0.1 serving
// a Nix-written cache directory, whose answers a scenario programs per
// request. The faults are the ones a real cache or network produces (a
// 5xx, a reset, a stall, a cut or a short file, a server gone), made to
// happen at a chosen request and byte so that the moments a process is
// killed at are deterministic: "before the first byte" holds a response
// before its headers, "mid-NAR" after K bytes of its body, until the test
// says go.

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fault is what a faultCache does to one request a rule matches.
type fault struct {
	// status answers with this HTTP status instead of the file.
	status int
	// delay: the response starts this late (a slow cache).
	delay time.Duration
	// holdHeaders holds the response before anything is written until
	// release (or the client goes).
	holdHeaders bool
	// After afterBytes bytes of the body (0: before the first), one of:
	hold     bool // hold until release, then go on
	cut      bool // end the connection cleanly (FIN): a short body
	reset    bool // reset the connection (RST)
	stall    bool // send nothing more, keep the connection open until the client goes
	truncate bool // serve the first afterBytes bytes of the file as the whole file
	// disappear: the whole server goes (listener and connections
	// closed), this request included; every later one is refused.
	disappear  bool
	afterBytes int64
}

// faultRule applies its fault to the requests match accepts.
type faultRule struct {
	// match gets the request's path and its number among requests for
	// that path (1 for the first) and for that kind ("nar" or "narinfo";
	// kindN, 1 for the first NAR request).
	match func(path string, n, kindN int) bool
	fault fault
	// limit: the rule applies this many times at most (0: always).
	limit int

	hits    int
	reached chan struct{} // closed the first time the fault's moment is reached
	release chan struct{} // closed by Release: held responses go on
	once    sync.Once
}

// Reached is closed once the rule's fault has happened (for a hold: the
// response is being held).
func (r *faultRule) Reached() <-chan struct{} { return r.reached }

// Release lets held responses go on.
func (r *faultRule) Release() { r.once.Do(func() { close(r.release) }) }

// faultCache is a cache directory served with programmable faults.
type faultCache struct {
	URL string
	dir string
	srv *http.Server
	ln  net.Listener

	mu       sync.Mutex
	rules    []*faultRule
	byPath   map[string]int
	byKind   map[string]int
	ranges   int // requests that carried a Range header
	gone     bool
	goneOnce sync.Once
}

// serveFaultCache serves dir on 127.0.0.1; it stops at cleanup.
func serveFaultCache(t testing.TB, dir string) *faultCache {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &faultCache{dir: dir, ln: ln, URL: "http://" + ln.Addr().String(), byPath: map[string]int{}, byKind: map[string]int{}}
	c.srv = &http.Server{Handler: http.HandlerFunc(c.serve), ReadHeaderTimeout: 10 * time.Second}
	go c.srv.Serve(ln)
	t.Cleanup(func() {
		c.mu.Lock()
		rules := c.rules
		c.mu.Unlock()
		for _, r := range rules {
			r.Release()
		}
		c.srv.Close()
	})
	return c
}

// add installs a rule; the first matching rule of a request applies.
func (c *faultCache) add(match func(path string, n, kindN int) bool, f fault, limit int) *faultRule {
	r := &faultRule{match: match, fault: f, limit: limit, reached: make(chan struct{}), release: make(chan struct{})}
	c.mu.Lock()
	c.rules = append(c.rules, r)
	c.mu.Unlock()
	return r
}

// requests returns how many requests each path had.
func (c *faultCache) requests() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps(c.byPath)
}

// rangeRequests is how many requests asked for a range (resumed a cut NAR).
func (c *faultCache) rangeRequests() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ranges
}

// matchers for rules.
func firstNAR(path string, n, kindN int) bool { return isNAR(path) && kindN == 1 }
func anyNAR(path string, n, kindN int) bool   { return isNAR(path) }
func everyNARinfoFirst(path string, n, kindN int) bool {
	return strings.HasSuffix(path, ".narinfo") && n == 1
}
func isNAR(path string) bool { return strings.HasPrefix(path, "/nar/") }

// narOf returns a matcher for the first request of one NAR file.
func narOf(url string) func(string, int, int) bool {
	return func(path string, n, kindN int) bool { return path == "/"+url && n == 1 }
}

func (c *faultCache) serve(w http.ResponseWriter, r *http.Request) {
	kind := "other"
	switch {
	case isNAR(r.URL.Path):
		kind = "nar"
	case strings.HasSuffix(r.URL.Path, ".narinfo"):
		kind = "narinfo"
	}
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		hijackClose(w, true)
		return
	}
	c.byPath[r.URL.Path]++
	c.byKind[kind]++
	if r.Header.Get("Range") != "" {
		c.ranges++
	}
	n, kindN := c.byPath[r.URL.Path], c.byKind[kind]
	var rule *faultRule
	for _, ru := range c.rules {
		if (ru.limit == 0 || ru.hits < ru.limit) && ru.match(r.URL.Path, n, kindN) {
			ru.hits++
			rule = ru
			break
		}
	}
	c.mu.Unlock()
	if rule == nil {
		http.FileServer(http.Dir(c.dir)).ServeHTTP(w, r)
		return
	}
	f := rule.fault
	reach := func() {
		select {
		case <-rule.reached:
		default:
			close(rule.reached)
		}
	}
	switch {
	case f.disappear:
		reach()
		c.mu.Lock()
		c.gone = true
		c.mu.Unlock()
		hijackClose(w, true)
		// Refuse every later connection, and end the others.
		c.goneOnce.Do(func() { go c.srv.Close() })
		return
	case f.delay > 0:
		reach()
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			return
		}
	case f.holdHeaders:
		reach()
		select {
		case <-rule.release:
		case <-r.Context().Done():
			return
		}
	case f.status != 0:
		reach()
		http.Error(w, http.StatusText(f.status), f.status)
		return
	case f.truncate:
		reach()
		data, err := os.ReadFile(filepath.Join(c.dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, "/"))))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		data = data[:min(int64(len(data)), f.afterBytes)]
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data)
		return
	}
	if f.hold || f.cut || f.reset || f.stall {
		w = &faultWriter{ResponseWriter: w, r: r, rule: rule, reach: reach, left: f.afterBytes}
	}
	http.FileServer(http.Dir(c.dir)).ServeHTTP(w, r)
}

// faultWriter passes left bytes of the body, then does its rule's fault.
type faultWriter struct {
	http.ResponseWriter
	r     *http.Request
	rule  *faultRule
	reach func()
	left  int64
	done  bool // the fault happened; a hold goes on writing
	dead  bool // the connection is gone
}

var errFaultCut = errors.New("chaos cache: connection cut")

func (w *faultWriter) Write(b []byte) (int, error) {
	if w.dead {
		return 0, errFaultCut
	}
	if w.done || int64(len(b)) <= w.left {
		n, err := w.ResponseWriter.Write(b)
		w.left -= int64(n)
		return n, err
	}
	n, err := w.ResponseWriter.Write(b[:w.left])
	if err != nil {
		return n, err
	}
	w.left = 0
	w.ResponseWriter.(http.Flusher).Flush()
	w.done = true
	f := w.rule.fault
	switch {
	case f.hold:
		w.reach()
		select {
		case <-w.rule.release:
		case <-w.r.Context().Done():
			w.dead = true
			return n, errFaultCut
		}
		m, err := w.ResponseWriter.Write(b[n:])
		return n + m, err
	case f.stall:
		w.reach()
		<-w.r.Context().Done()
	case f.cut, f.reset:
		w.reach()
		hijackClose(w.ResponseWriter, f.reset)
	}
	w.dead = true
	return n, errFaultCut
}

// hijackClose ends the connection under w: with a reset (RST) or a
// plain close (FIN). What was written is flushed first.
func hijackClose(w http.ResponseWriter, reset bool) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	buf.Flush()
	if tcp, ok := conn.(*net.TCPConn); ok && reset {
		tcp.SetLinger(0)
	}
	conn.Close()
}
