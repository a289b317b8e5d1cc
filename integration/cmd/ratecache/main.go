// Command ratecache serves a directory (a Nix binary cache) over HTTP
// through one bandwidth limit shared by every connection, and counts the
// bytes it serves: the uplink of a cluster, for the peers benchmark
// (hack/bench-peers.sh).
//
//	ratecache -dir DIR -addr 127.0.0.1:0 -addr-file F -rate 50MB
//
// GET /.ratecache/stats answers the counts as JSON (Stats); POST
// /.ratecache/reset sets them to zero, between two rollouts.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	statsPath = "/.ratecache/stats"
	resetPath = "/.ratecache/reset"
	// chunk is the most a response writes per reservation: small enough
	// that many connections share the limit evenly.
	chunk = 16 << 10
)

// Stats is what the server counts: response body bytes of successful GETs
// (2xx), by kind of file, and how many times each NAR was served.
type Stats struct {
	NarBytes     int64            `json:"narBytes"`
	NarinfoBytes int64            `json:"narinfoBytes"`
	OtherBytes   int64            `json:"otherBytes"`
	Requests     int64            `json:"requests"`
	NotFound     int64            `json:"notFound"`
	Nars         map[string]int64 `json:"nars"`
}

// limiter hands out the shared bandwidth: each write reserves the time
// its bytes take at the rate, after every earlier reservation, and
// sleeps until its reservation ends.
type limiter struct {
	rate float64 // bytes per second; 0: unlimited
	mu   sync.Mutex
	next time.Time
}

func (l *limiter) wait(ctx context.Context, n int) error {
	if l.rate <= 0 {
		return nil
	}
	d := time.Duration(float64(n) / l.rate * float64(time.Second))
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(d)
	until := l.next
	l.mu.Unlock()
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// limitedWriter paces and counts a response body. It has no ReadFrom, so
// the file server cannot bypass it with sendfile.
type limitedWriter struct {
	http.ResponseWriter
	ctx    context.Context
	lim    *limiter
	status int
	bytes  int64
}

func (w *limitedWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), chunk)
		if err := w.lim.wait(w.ctx, n); err != nil {
			return written, err
		}
		m, err := w.ResponseWriter.Write(p[:n])
		written += m
		w.bytes += int64(m)
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

type server struct {
	files http.Handler
	lim   *limiter
	mu    sync.Mutex
	stats Stats
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case statsPath:
		s.mu.Lock()
		b, err := json.Marshal(s.stats)
		s.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		return
	case resetPath:
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		s.mu.Lock()
		s.stats = Stats{Nars: map[string]int64{}}
		s.mu.Unlock()
		return
	}
	lw := &limitedWriter{ResponseWriter: w, ctx: r.Context(), lim: s.lim}
	s.files.ServeHTTP(lw, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	switch {
	case lw.status == http.StatusNotFound:
		s.stats.NotFound++
	case lw.status < 200 || lw.status > 299 || r.Method != http.MethodGet:
	case strings.HasPrefix(r.URL.Path, "/nar/"):
		s.stats.NarBytes += lw.bytes
		s.stats.Nars[r.URL.Path]++
	case strings.HasSuffix(r.URL.Path, ".narinfo"):
		s.stats.NarinfoBytes += lw.bytes
	default:
		s.stats.OtherBytes += lw.bytes
	}
}

// parseRate reads a rate in bytes per second: a number with an optional
// k, M or G suffix (powers of 1000) and an optional B, e.g. 50MB.
func parseRate(s string) (float64, error) {
	v := strings.TrimSuffix(strings.TrimSpace(s), "B")
	mult := 1.0
	if v != "" {
		switch v[len(v)-1] {
		case 'k', 'K':
			mult, v = 1e3, v[:len(v)-1]
		case 'M':
			mult, v = 1e6, v[:len(v)-1]
		case 'G':
			mult, v = 1e9, v[:len(v)-1]
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("-rate %q: want bytes per second, e.g. 50MB (0: unlimited)", s)
	}
	return f * mult, nil
}

func main() {
	dir := flag.String("dir", ".", "the binary cache directory to serve")
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	addrFile := flag.String("addr-file", "", "write the address listened on to this file (for -addr with port 0)")
	rateFlag := flag.String("rate", "50MB", "bytes per second all responses share (k, M, G: powers of 1000; 0: unlimited)")
	flag.Parse()
	rate, err := parseRate(*rateFlag)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(*dir, "nix-cache-info")); err != nil {
		log.Fatalf("-dir %s: not a binary cache: %v", *dir, err)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	if *addrFile != "" {
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(l.Addr().String()+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			log.Fatal(err)
		}
	}
	s := &server{files: http.FileServer(http.Dir(*dir)), lim: &limiter{rate: rate}, stats: Stats{Nars: map[string]int64{}}}
	log.Printf("serving %s on %s at %s bytes/s", *dir, l.Addr(), *rateFlag)
	log.Fatal(http.Serve(l, s))
}
