// Package peer lets the nodes of a cluster share the store paths they
// fetch, so that each path crosses the cluster's uplink once: the node
// agent serves its store to the other nodes as a Nix binary cache
// (server*.go); the peers file the agent writes and each fetch child
// reads; the rendezvous hash that names every path's coordinating node
// without a coordinator of coordinators; the coordinator (leases and
// done records) on the agent's peer listener, and its client.
//
// Peers are never trusted: a fetch takes each path's signed narinfo from
// its upstream caches and only the NAR's bytes from a peer, checked
// against that narinfo like any cache's (pkg/fetch).
package peer

// Peer is one node sharing its store: its node name and the base URL of
// its agent's peer listener.
type Peer struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// CachePrefix starts the name a fetch gives a peer where it names caches
// ("peer:<node>": in its progress, results and fetch records), never a
// URL; the agent counts every such cache as one "peer" source.
const CachePrefix = "peer:"
