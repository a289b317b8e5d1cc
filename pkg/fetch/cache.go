package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// Cache is one Nix binary cache.
type Cache struct {
	// URL as configured, without storepkg's own query parameters and with
	// any password replaced by "xxxxx" (url.URL.Redacted): it names the
	// cache wherever a cache is named (errors, --json results and
	// failures, fetch records, the agent's metric labels and pod events),
	// so credentials in a substituter URL go no further than the requests.
	URL string
	// Trusted caches are used without a signature check (a cache the
	// operator controls on a private network); set with "?trusted=1".
	Trusted bool

	// peer: a node of the cluster (URL "peer:<name>"), not an upstream
	// cache; it serves only NARs checked against upstream's narinfos.
	peer bool

	priority    int
	hasPriority bool
	t           transport

	infoOnce sync.Once
	info     *narinfo.CacheInfo
	infoErr  error
}

// NewCache parses a substituter URL: file:///dir, http(s)://host/path,
// s3://bucket (with Nix's region, endpoint, scheme and profile
// parameters, which stay in the cache's name: see s3.go).
// Query parameters "priority=N" (lower is tried first, as in Nix) and
// "trusted=1" are ours; others are refused so a typo is not ignored.
// Credentials in the URL (https://user:password@host) are sent as basic
// auth, and only to the cache's own scheme, host and port (see
// credentialRedirects); no message ever shows the password.
func NewCache(raw string, o *Options) (*Cache, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse quotes raw whole, and its cause may quote part of
		// the userinfo: say only what is safe.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if strings.Contains(raw, "@") {
			return nil, fmt.Errorf("substituter %q: not a valid URL", fetchapi.RedactURL(raw))
		}
		return nil, fmt.Errorf("substituter %q: %w", raw, err)
	}
	raw = fetchapi.RedactURL(raw)
	if u.Scheme == "s3" {
		raw = redactS3(raw, u)
	}
	if u.Opaque != "" {
		// "https:user:password@host": no host to send to, and Redacted
		// would not hide the password.
		return nil, fmt.Errorf("substituter %q: not a URL with a host or path (want file:///dir or http(s)://host/path)", raw)
	}
	c := &Cache{}
	q := u.Query()
	keep := url.Values{}
	for k, vs := range q {
		v := vs[len(vs)-1]
		if u.Scheme == "s3" && isS3Param(k) {
			keep.Set(k, v)
			continue
		}
		switch k {
		case "priority":
			if c.priority, err = strconv.Atoi(v); err != nil {
				return nil, fmt.Errorf("substituter %q: priority %q is not a number", raw, v)
			}
			c.hasPriority = true
		case "trusted":
			c.Trusted = v == "1" || v == "true"
		default:
			return nil, fmt.Errorf("substituter %q: unknown parameter %q", raw, k)
		}
	}
	// ':' and '/' are legal in a query: the name stays readable
	// (s3://b?endpoint=http://host:9000).
	u.RawQuery = strings.NewReplacer("%3A", ":", "%2F", "/").Replace(keep.Encode())
	c.URL = fetchapi.RedactedURL(u)
	if c.t, err = newTransport(u, o); err != nil {
		return nil, fmt.Errorf("substituter %q: %w", raw, err)
	}
	return c, nil
}

// Info loads nix-cache-info once and checks the cache serves /nix/store.
func (c *Cache) Info(ctx context.Context) (*narinfo.CacheInfo, error) {
	c.infoOnce.Do(func() {
		c.info, c.infoErr = c.loadInfo(ctx)
	})
	return c.info, c.infoErr
}

func (c *Cache) loadInfo(ctx context.Context) (*narinfo.CacheInfo, error) {
	rc, err := c.open(ctx, "nix-cache-info")
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("cache %s: no nix-cache-info: not a Nix binary cache", c.URL)
	}
	if err != nil {
		return nil, fmt.Errorf("cache %s: nix-cache-info: %w", c.URL, err)
	}
	defer rc.Close()
	ci, err := narinfo.ParseCacheInfo(rc)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.URL, err)
	}
	if ci.StoreDir != storepath.StoreDir {
		return nil, fmt.Errorf("cache %s: StoreDir is %q, want %s", c.URL, ci.StoreDir, storepath.StoreDir)
	}
	if c.hasPriority {
		ci.Priority = c.priority
	}
	return ci, nil
}

// open gets a file of the cache, retrying transient failures.
func (c *Cache) open(ctx context.Context, rel string) (io.ReadCloser, error) {
	return retry(ctx, c.retryPolicy(), func() (io.ReadCloser, error) { return c.t.get(ctx, rel) })
}

// NarInfo fetches and parses the narinfo of p. It returns ErrNotFound when
// the cache does not have p, and refuses a narinfo that describes another path.
func (c *Cache) NarInfo(ctx context.Context, p storepath.Path) (*narinfo.NarInfo, error) {
	if _, err := c.Info(ctx); err != nil {
		return nil, err
	}
	var ni *narinfo.NarInfo
	_, err := retry(ctx, c.retryPolicy(), func() (struct{}, error) {
		rc, err := c.t.get(ctx, p.HashPart()+".narinfo")
		if err != nil {
			return struct{}{}, err
		}
		defer rc.Close()
		ni, err = narinfo.Parse(rc)
		return struct{}{}, err
	})
	if err != nil {
		return nil, err
	}
	if ni.StorePath != p {
		return nil, fmt.Errorf("narinfo %s.narinfo describes %s", p.HashPart(), ni.StorePath)
	}
	return ni, nil
}

// local reports whether the cache is a directory here (file://): reading
// it costs next to nothing next to decoding what it holds.
func (c *Cache) local() bool {
	_, ok := c.t.(fileTransport)
	return ok
}

func (c *Cache) retryPolicy() RetryPolicy {
	switch t := c.t.(type) {
	case *httpTransport:
		return t.retry
	case *s3Transport:
		return t.retry
	}
	return RetryPolicy{Attempts: 1}
}
