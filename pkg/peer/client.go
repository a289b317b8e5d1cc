package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// ErrNotFound: the peer does not have the path (HTTP 404).
var ErrNotFound = errors.New("not found")

// MaxWait is the longest ?wait= a peer honours.
const MaxWait = 60 * time.Second

// Client speaks to peers' listeners as node Self, with the peers file's
// token. Callers bound each call with ctx.
type Client struct {
	Self  string
	Token string
	HTTP  *http.Client // default http.DefaultClient
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// Claim asks owner, the coordinator of paths, who holds each; gone names
// per path a holder found unable to serve it.
func (c *Client) Claim(ctx context.Context, owner Peer, paths []storepath.Path, gone map[storepath.Path]string) (*ClaimResponse, error) {
	req := ClaimRequest{Node: c.Self, Paths: absolute(paths)}
	if len(gone) > 0 {
		req.Gone = make(map[string]string, len(gone))
		for p, h := range gone {
			req.Gone[p.Absolute()] = h
		}
	}
	var resp ClaimResponse
	if err := c.post(ctx, owner, ClaimPath, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Done tells owner that this node made paths valid.
func (c *Client) Done(ctx context.Context, owner Peer, paths []storepath.Path) error {
	return c.post(ctx, owner, DonePath, DoneRequest{Node: c.Self, Paths: absolute(paths)}, nil)
}

func absolute(paths []storepath.Path) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = p.Absolute()
	}
	return out
}

func (c *Client) post(ctx context.Context, to Peer, route string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(to.URL, "/")+route, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("peer %s: %w", to.Name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	c.Authorize(req)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("peer %s: %w", to.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("peer %s: %s %s: HTTP %s: %s", to.Name, http.MethodPost, route, resp.Status, strings.TrimSpace(string(msg)))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxRequestBytes)).Decode(out); err != nil {
		return fmt.Errorf("peer %s: %s: %w", to.Name, route, err)
	}
	return nil
}

// Authorize adds the bearer token to a request to a peer.
func (c *Client) Authorize(req *http.Request) {
	req.Header.Set("Authorization", "Bearer "+c.Token)
}

// NarInfo gets p's narinfo from holder, waiting up to wait (whole
// seconds, at most MaxWait; 0: no wait) for the holder to have it. It
// returns ErrNotFound when the holder does not have it by then. The
// narinfo is only parsed: the caller compares it with the signed one.
func (c *Client) NarInfo(ctx context.Context, holder Peer, p storepath.Path, wait time.Duration) (*narinfo.NarInfo, error) {
	u := strings.TrimSuffix(holder.URL, "/") + "/" + p.HashPart() + ".narinfo"
	if wait > 0 {
		secs := int(math.Ceil(min(wait, MaxWait).Seconds()))
		u += "?wait=" + strconv.Itoa(secs)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", holder.Name, err)
	}
	c.Authorize(req)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", holder.Name, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, ErrNotFound
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("peer %s: %s.narinfo: HTTP %s", holder.Name, p.HashPart(), resp.Status)
	}
	ni, err := narinfo.Parse(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %s.narinfo: %w", holder.Name, p.HashPart(), err)
	}
	if ni.StorePath != p {
		return nil, fmt.Errorf("peer %s: %s.narinfo describes %s", holder.Name, p.HashPart(), ni.StorePath)
	}
	return ni, nil
}
