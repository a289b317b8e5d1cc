package peer

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// The coordinator's routes, under the agent's peer listener.
const (
	ClaimPath = "/storepkg/v1/claim"
	DonePath  = "/storepkg/v1/done"
)

// Defaults of CoordinatorConfig.
const (
	DefaultLeaseTTL = 30 * time.Second
	DefaultDoneTTL  = 15 * time.Minute
)

// Bounds on one request: a closure of tens of thousands of paths fits.
const (
	maxRequestBytes = 8 << 20
	maxRequestPaths = 50000
)

// ClaimRequest is the body of POST /storepkg/v1/claim: node wants paths;
// Gone names, per path, a holder the node found unable to serve it.
type ClaimRequest struct {
	Node  string            `json:"node"`
	Paths []string          `json:"paths"`
	Gone  map[string]string `json:"gone,omitempty"`
}

// ClaimResponse names each claimed path's holder. Have lists the paths
// whose holder has them already (valid in the coordinator's store, or a
// done record) rather than a lease: a holder that then answers "not
// found" lost the path, and a waiter reports it gone at once instead of
// waiting on it. (An addition to the contract of issue 16; older
// clients ignore it.)
type ClaimResponse struct {
	Holders map[string]string `json:"holders"`
	Have    []string          `json:"have,omitempty"`
}

// DoneRequest is the body of POST /storepkg/v1/done: node made paths
// valid in its store.
type DoneRequest struct {
	Node  string   `json:"node"`
	Paths []string `json:"paths"`
}

// Validity is what the coordinator asks of its node's store
// (*store.Store has it).
type Validity interface {
	ValidSubset(ctx context.Context, paths []storepath.Path) (map[storepath.Path]bool, error)
}

// CoordinatorConfig configures NewCoordinator.
type CoordinatorConfig struct {
	Self  string   // this node's name
	Store Validity // this node's store: a path valid here is held by Self
	// Peers returns the current peer list: requests from nodes not in it
	// are refused, and records of holders that left it are dropped.
	Peers func() []Peer
	// Token, if set, is checked on every request (the peer server checks
	// it too; this keeps the coordinator safe on its own).
	Token    string
	LeaseTTL time.Duration // default DefaultLeaseTTL
	DoneTTL  time.Duration // default DefaultDoneTTL
	Log      *logrus.Entry
	now      func() time.Time // tests
}

// record is a path's holder: a lease (fetching it upstream) or done.
type record struct {
	holder  string
	done    bool
	expires time.Time
}

type coordinator struct {
	cfg CoordinatorConfig
	mux *http.ServeMux

	mu        sync.Mutex
	records   map[storepath.Path]*record
	lastSweep time.Time
}

// NewCoordinator returns the handler of the coordinator routes
// (ClaimPath, DonePath), to be mounted on the peer listener's mux under
// /storepkg/v1/. Its records live in memory only: an agent restart loses
// them, which costs at most one more upstream download per path.
func NewCoordinator(cfg CoordinatorConfig) http.Handler {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.DoneTTL <= 0 {
		cfg.DoneTTL = DefaultDoneTTL
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.Peers == nil {
		cfg.Peers = func() []Peer { return nil }
	}
	c := &coordinator{cfg: cfg, records: map[storepath.Path]*record{}}
	c.mux = http.NewServeMux()
	c.mux.HandleFunc("POST "+ClaimPath, c.claim)
	c.mux.HandleFunc("POST "+DonePath, c.done)
	return c
}

func (c *coordinator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Token != "" && !CheckToken(r, c.cfg.Token) {
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// CheckToken reports whether r carries "Authorization: Bearer token",
// compared in constant time.
func CheckToken(r *http.Request, token string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func (c *coordinator) readBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err := dec.Decode(v); err != nil {
		http.Error(w, "bad request body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

// members returns the names of the current peers.
func (c *coordinator) members() map[string]bool {
	m := map[string]bool{}
	for _, p := range c.cfg.Peers() {
		m[p.Name] = true
	}
	return m
}

// checkRequest checks the requesting node and parses its paths.
func (c *coordinator) checkRequest(w http.ResponseWriter, node string, raw []string, members map[string]bool) ([]storepath.Path, bool) {
	if !members[node] {
		http.Error(w, fmt.Sprintf("node %q is not a peer of %s", node, c.cfg.Self), http.StatusForbidden)
		return nil, false
	}
	if len(raw) > maxRequestPaths {
		http.Error(w, fmt.Sprintf("paths: %d, more than %d in one request", len(raw), maxRequestPaths), http.StatusBadRequest)
		return nil, false
	}
	paths := make([]storepath.Path, 0, len(raw))
	for _, s := range raw {
		p, err := storepath.Parse(s)
		if err != nil {
			http.Error(w, "paths: "+err.Error(), http.StatusBadRequest)
			return nil, false
		}
		paths = append(paths, p)
	}
	return paths, true
}

func (c *coordinator) claim(w http.ResponseWriter, r *http.Request) {
	var req ClaimRequest
	if !c.readBody(w, r, &req) {
		return
	}
	members := c.members()
	paths, ok := c.checkRequest(w, req.Node, req.Paths, members)
	if !ok {
		return
	}
	var valid map[storepath.Path]bool
	if c.cfg.Store != nil {
		var err error
		if valid, err = c.cfg.Store.ValidSubset(r.Context(), paths); err != nil {
			// Answer without the store: the requester fetches upstream at
			// worst.
			c.cfg.Log.WithError(err).Warn("peer coordinator: checking the store")
			valid = nil
		}
	}
	resp := ClaimResponse{Holders: make(map[string]string, len(paths))}
	now := c.cfg.now()
	c.mu.Lock()
	c.sweepLocked(now, members)
	for i, p := range paths {
		gone := req.Gone[req.Paths[i]]
		if valid[p] && gone != c.cfg.Self {
			resp.Holders[req.Paths[i]] = c.cfg.Self
			resp.Have = append(resp.Have, req.Paths[i])
			continue
		}
		rec := c.records[p]
		if rec != nil && (!now.Before(rec.expires) || !members[rec.holder] || rec.holder == gone) {
			delete(c.records, p)
			rec = nil
		}
		switch {
		case rec == nil:
			rec = &record{holder: req.Node}
			c.records[p] = rec
		case rec.holder == req.Node && rec.done:
			// The node has it done yet claims it again: it lost it
			// (collected); it fetches it anew, under a lease.
			rec.done = false
		}
		if !rec.done {
			if rec.holder == req.Node {
				rec.expires = now.Add(c.cfg.LeaseTTL) // granted or renewed
			}
		} else {
			resp.Have = append(resp.Have, req.Paths[i])
		}
		resp.Holders[req.Paths[i]] = rec.holder
	}
	c.mu.Unlock()
	writeJSON(w, resp)
}

func (c *coordinator) done(w http.ResponseWriter, r *http.Request) {
	var req DoneRequest
	if !c.readBody(w, r, &req) {
		return
	}
	paths, ok := c.checkRequest(w, req.Node, req.Paths, c.members())
	if !ok {
		return
	}
	now := c.cfg.now()
	c.mu.Lock()
	for _, p := range paths {
		c.records[p] = &record{holder: req.Node, done: true, expires: now.Add(c.cfg.DoneTTL)}
	}
	c.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// sweepLocked drops expired records and those of holders that left the
// peer list, at most once a second: the map stays as large as the paths
// being fetched or recently fetched in the cluster.
func (c *coordinator) sweepLocked(now time.Time, members map[string]bool) {
	if now.Sub(c.lastSweep) < time.Second {
		return
	}
	c.lastSweep = now
	for p, rec := range c.records {
		if !now.Before(rec.expires) || !members[rec.holder] {
			delete(c.records, p)
		}
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v) // a client gone meanwhile is no error of ours
}
