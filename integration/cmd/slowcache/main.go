// Command slowcache serves a directory (a Nix binary cache) over HTTP and
// holds every NAR response back for a while: a slow cache on demand, for
// the kind e2e's check that a slow fetch shows in the pod's events. It
// counts what it serves per file, so the e2e can check how many times
// each NAR crossed the "uplink": GET /.slowcache/stats answers
// {"/nar/x.nar.zst":{"requests":1,"bytes":123},...} (200 responses only).
//
//	slowcache -dir DIR -addr IP:PORT -nar-delay 8s
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"strings"
	"sync"
	"time"
)

// StatsPath is where the counts are served.
const StatsPath = "/.slowcache/stats"

type count struct {
	Requests int   `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

// counter is a ResponseWriter that counts the body of a 200 response.
type counter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (c *counter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *counter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.bytes += int64(n)
	return n, err
}

func main() {
	dir := flag.String("dir", ".", "directory to serve")
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	delay := flag.Duration("nar-delay", 8*time.Second, "how long to hold back each NAR")
	flag.Parse()
	files := http.FileServer(http.Dir(*dir))
	var mu sync.Mutex
	counts := map[string]*count{}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == StatsPath {
			mu.Lock()
			defer mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(counts)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			select {
			case <-time.After(*delay):
			case <-r.Context().Done():
				return
			}
		}
		c := &counter{ResponseWriter: w}
		files.ServeHTTP(c, r)
		if c.status == http.StatusOK && r.Method == http.MethodGet {
			mu.Lock()
			n := counts[r.URL.Path]
			if n == nil {
				n = &count{}
				counts[r.URL.Path] = n
			}
			n.Requests++
			n.Bytes += c.bytes
			mu.Unlock()
		}
	})
	log.Printf("serving %s on %s, NARs after %s", *dir, *addr, *delay)
	log.Fatal(http.ListenAndServe(*addr, handler))
}
