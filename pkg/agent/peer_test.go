package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/peer"
)

func peerGet(url, token string) (*http.Response, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return http.DefaultClient.Do(req)
}

// TestPeerServer: the agent serves its store to peers on a listener of
// its own, with the token only, and stops it promptly on shutdown, a
// request waiting for a path included; without a token it serves none.
func TestPeerServer(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	const token = "0123456789abcdef-token"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := New(ctx, Config{StoreRoot: t.TempDir(), StatusDir: filepath.Join(t.TempDir(), "fetches"),
		ListenAddress: "127.0.0.1:0", PeerListen: "127.0.0.1:0", PeerToken: token, Log: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if a.PeerAddr() == "" || a.PeerAddr() == a.Addr() {
		t.Fatalf("peer listener %q, metrics %q: want two listeners", a.PeerAddr(), a.Addr())
	}
	base := "http://" + a.PeerAddr()
	for tok, want := range map[string]int{token: http.StatusOK, "": http.StatusUnauthorized, "nope": http.StatusUnauthorized} {
		resp, err := peerGet(base+"/nix-cache-info", tok)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("nix-cache-info with token %q: %s, want %d", tok, resp.Status, want)
		}
	}
	if resp, err := peerGet("http://"+a.Addr()+"/nix-cache-info", token); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("the metrics listener serves the store")
		}
	}

	waited := make(chan error, 1)
	go func() {
		resp, err := peerGet(base+"/00000000000000000000000000000000.narinfo?wait=60", token)
		if err == nil {
			resp.Body.Close()
		}
		waited <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- a.Wait() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		t.Logf("stopped in %v with a waiting request", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("agent not stopped 5s after its context ended, with a request waiting")
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Error("the waiting request did not end")
	}
	if c, err := net.Dial("tcp", a.PeerAddr()); err == nil {
		c.Close()
		t.Error("peer listener still accepting after shutdown")
	}

	// No token: no peer server.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	b, err := New(ctx2, Config{StoreRoot: t.TempDir(), StatusDir: filepath.Join(t.TempDir(), "fetches"),
		PeerListen: "127.0.0.1:0", Log: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx2); err != nil {
		t.Fatal(err)
	}
	if b.PeerAddr() != "" {
		t.Errorf("serving peers on %s without a token", b.PeerAddr())
	}
	cancel2()
	b.Wait()
}

// TestPeerCoordinatorServed: an agent with a peer list and a node name
// serves the coordinator on its peer listener (one lease per path, the
// second claimer told to wait for the first); without a peer list it
// serves none.
func TestPeerCoordinatorServed(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	const token = "0123456789abcdef-token"
	peers := []peer.Peer{{Name: "node-a", URL: "http://127.0.0.1:1"}, {Name: "node-b", URL: "http://127.0.0.1:2"}, {Name: "node-c", URL: "http://127.0.0.1:3"}}
	claim := func(t *testing.T, addr, node string) (int, map[string]string) {
		t.Helper()
		body, _ := json.Marshal(peer.ClaimRequest{Node: node, Paths: []string{"/nix/store/00000000000000000000000000000000-x"}})
		req, err := http.NewRequest("POST", "http://"+addr+peer.ClaimPath, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var cr peer.ClaimResponse
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&cr); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, cr.Holders
	}
	for _, withPeers := range []bool{true, false} {
		ctx, cancel := context.WithCancel(context.Background())
		cfg := Config{StoreRoot: t.TempDir(), StatusDir: filepath.Join(t.TempDir(), "fetches"),
			PeerListen: "127.0.0.1:0", PeerToken: token, NodeName: "node-a", Log: logrus.NewEntry(log)}
		if withPeers {
			cfg.Peers = func() []peer.Peer { return peers }
		}
		a, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		code, holders := claim(t, a.PeerAddr(), "node-b")
		if !withPeers {
			if code != http.StatusNotFound {
				t.Errorf("claim without a peer list: %d, want 404", code)
			}
		} else {
			if code != http.StatusOK || holders["/nix/store/00000000000000000000000000000000-x"] != "node-b" {
				t.Errorf("first claim: %d %v, want node-b to hold the lease", code, holders)
			}
			if _, holders := claim(t, a.PeerAddr(), "node-c"); holders["/nix/store/00000000000000000000000000000000-x"] != "node-b" {
				t.Errorf("second claim: %v, want node-c told to wait for node-b", holders)
			}
		}
		cancel()
		a.Wait()
	}
}
