// Command slowcache serves a directory (a Nix binary cache) over HTTP and
// holds every NAR response back for a while: a slow cache on demand, for
// the kind e2e's check that a slow fetch shows in the pod's events.
//
//	slowcache -dir DIR -addr IP:PORT -nar-delay 8s
package main

import (
	"flag"
	"log"
	"net/http"
	"strings"
	"time"
)

func main() {
	dir := flag.String("dir", ".", "directory to serve")
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	delay := flag.Duration("nar-delay", 8*time.Second, "how long to hold back each NAR")
	flag.Parse()
	files := http.FileServer(http.Dir(*dir))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			select {
			case <-time.After(*delay):
			case <-r.Context().Done():
				return
			}
		}
		files.ServeHTTP(w, r)
	})
	log.Printf("serving %s on %s, NARs after %s", *dir, *addr, *delay)
	log.Fatal(http.ListenAndServe(*addr, handler))
}
