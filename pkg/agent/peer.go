package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/storepkg/storepkg/pkg/peer"
)

// startPeerServer serves the store to the peers on PeerListen until ctx
// ends. Requests get contexts that end with ctx, so long waits and NAR
// streams stop at once on shutdown, and Wait closes the store only once
// every request has returned.
func (a *Agent) startPeerServer(ctx context.Context) error {
	if a.cfg.PeerListen == "" {
		return nil
	}
	if a.cfg.PeerToken == "" {
		a.log.Info("not serving the store to peers: no peer token")
		return nil
	}
	peers, allowed := a.cfg.Peers, (func(netip.Addr) bool)(nil)
	if a.peers != nil {
		// Discovery's list: the peers' agents, and the addresses their
		// fetches come from (their nodes', not their agents' pod IPs).
		peers, allowed = a.Peers, a.PeerClientAllowed
	}
	coord := a.cfg.PeerCoordinator
	if coord == nil && peers != nil && a.cfg.NodeName != "" {
		coord = peer.NewCoordinator(peer.CoordinatorConfig{
			Self: a.cfg.NodeName, Store: a.store, Peers: peers, Token: a.cfg.PeerToken,
			Log: a.log.WithField("server", "coordinator"),
		})
	}
	srv, err := peer.NewServer(peer.ServerConfig{
		Store: a.store, Token: a.cfg.PeerToken, Self: a.cfg.NodeName, Peers: peers, Allowed: allowed,
		Coordinator: coord, Compression: a.cfg.PeerCompression,
		Log: a.log.WithField("server", "peer"),
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	l, err := net.Listen("tcp", a.cfg.PeerListen)
	if err != nil {
		return fmt.Errorf("agent: peer server: listening on %s: %w", a.cfg.PeerListen, err)
	}
	a.peerL = l
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No write timeout: a NAR may take long to stream; a stalled
		// client is cut by TCP keepalives, and its request by shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	served := make(chan struct{})
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		defer close(served)
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.WithError(err).Error("peer server stopped")
		}
	}()
	go func() {
		defer a.wg.Done()
		select {
		case <-ctx.Done():
		case <-served:
		}
		// The requests' contexts have ended: they return promptly.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			a.log.WithError(err).Warn("peer server: requests still running at shutdown")
			hs.Close()
		}
	}()
	return nil
}

// PeerAddr is the address the peer server listens on ("" if none).
func (a *Agent) PeerAddr() string {
	if a.peerL == nil {
		return ""
	}
	return a.peerL.Addr().String()
}
