package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/storepkg/storepkg/pkg/fetchapi"
)

// ErrNotFound means the cache does not have the file (HTTP 404 or 403,
// as Nix treats both, or a missing file in a file:// cache).
var ErrNotFound = errors.New("not found")

// transport reads files of one binary cache by their relative path.
// Implementations: file://, http(s):// and s3:// (s3.go).
type transport interface {
	get(ctx context.Context, rel string) (io.ReadCloser, error)
}

// fileTransport reads a cache that is a directory here. The names it is
// given come from the cache (a narinfo's URL, which no signature
// covers), so it opens only regular files inside the directory: a name
// that is absolute, climbs out with "..", or leads out through a
// symbolic link is refused (os.Root, openat2 RESOLVE_BENEATH's
// semantics), and so is a FIFO, socket or device, checked before it is
// opened and again on the open file, which is opened O_NONBLOCK so that
// a FIFO swapped in meanwhile cannot block the open.
type fileTransport struct{ dir string }

func (t fileTransport) get(_ context.Context, rel string) (io.ReadCloser, error) {
	if path.IsAbs(rel) {
		return nil, fmt.Errorf("%q is an absolute path: only files inside the cache directory %s are read", rel, t.dir)
	}
	root, err := os.OpenRoot(t.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	defer root.Close()
	name := filepath.FromSlash(rel)
	outside := func(err error) error {
		return fmt.Errorf("%q is not a file inside the cache directory %s: %w", rel, t.dir, err)
	}
	fi, err := root.Stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, outside(err)
	}
	if err := checkRegular(rel, t.dir, fi); err != nil {
		return nil, err
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, outside(err)
	}
	if fi, err = f.Stat(); err == nil {
		err = checkRegular(rel, t.dir, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkRegular refuses what is not a regular file: reading a FIFO could
// block forever, and a device (/dev/zero) could be read without end.
func checkRegular(rel, dir string, fi fs.FileInfo) error {
	if fi.Mode().IsRegular() {
		return nil
	}
	kind := "not a regular file"
	switch m := fi.Mode(); {
	case m.IsDir():
		kind = "a directory"
	case m&fs.ModeNamedPipe != 0:
		kind = "a FIFO"
	case m&fs.ModeSocket != 0:
		kind = "a socket"
	case m&fs.ModeDevice != 0:
		kind = "a device"
	}
	return fmt.Errorf("%q in the cache directory %s is %s, not a regular file", rel, dir, kind)
}

// RetryPolicy says how transient failures (5xx, 429, timeouts, resets) are
// retried: Attempts tries in all, waiting Backoff, 2*Backoff, … (with jitter).
type RetryPolicy struct {
	Attempts int
	Backoff  time.Duration
}

// DefaultRetry is used when Options.Retry is zero.
var DefaultRetry = RetryPolicy{Attempts: 4, Backoff: 250 * time.Millisecond}

type httpTransport struct {
	base   *url.URL // without userinfo: requests and their errors carry no password
	client *http.Client
	auth   func(*http.Request) // sets the cache's credentials, if it has any
	retry  RetryPolicy
	stall  time.Duration
}

// transientError marks failures worth retrying.
type transientError struct{ err error }

func (e transientError) Error() string { return e.err.Error() }
func (e transientError) Unwrap() error { return e.err }

func isTransient(err error) bool {
	if errors.Is(err, ErrUnavailable) {
		return false // already retried as often as the policy allows
	}
	var te transientError
	if errors.As(err, &te) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// A bare io.ErrUnexpectedEOF or EPIPE is not one: the HTTP transport
	// marks its own failures (transientError), and these come from a
	// decoder or xz(1) reading a file that ended early, which the same
	// file does again.
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, errStalled)
}

// ErrUnavailable: a cache kept failing in a way worth retrying (5xx,
// 429, timeouts, resets, a connection cut mid-file) until the retry
// policy's attempts ran out.
var ErrUnavailable = errors.New("cache unavailable")

// exhaustedError is a transient failure that lasted through every
// attempt: it is ErrUnavailable, and no longer transient, so that an
// outer retry does not multiply the attempts.
type exhaustedError struct {
	err      error
	attempts int
}

func (e *exhaustedError) Error() string {
	if e.attempts > 1 {
		return fmt.Sprintf("%v (after %d attempts)", e.err, e.attempts)
	}
	return e.err.Error()
}

func (e *exhaustedError) Unwrap() []error { return []error{e.err, ErrUnavailable} }

// retry runs op until it succeeds, fails permanently, or attempts run out.
func retry[T any](ctx context.Context, p RetryPolicy, op func() (T, error)) (T, error) {
	var zero T
	wait := p.Backoff
	for attempt := 1; ; attempt++ {
		v, err := op()
		if err == nil || !isTransient(err) || attempt >= p.Attempts {
			switch {
			case err != nil && isTransient(err):
				err = &exhaustedError{err: err, attempts: attempt}
			case err != nil && attempt > 1:
				err = fmt.Errorf("%w (after %d attempts)", err, attempt)
			}
			return v, err
		}
		jitter := time.Duration(rand.Int64N(int64(wait)/2 + 1))
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-time.After(wait + jitter):
		}
		wait *= 2
	}
}

func (t *httpTransport) get(ctx context.Context, rel string) (io.ReadCloser, error) {
	u := t.base.JoinPath(rel)
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	if t.auth != nil {
		t.auth(req)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		cancel()
		if errors.As(err, new(*redirectError)) {
			return nil, err // the same answer next time
		}
		return nil, transientError{err}
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return newStallReader(resp.Body, t.stall, cancel), nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		resp.Body.Close()
		cancel()
		return nil, ErrNotFound
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
		resp.Body.Close()
		cancel()
		return nil, transientError{fmt.Errorf("HTTP %s", resp.Status)}
	default:
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
}

var errStalled = errors.New("download stalled")

// stallReader cancels a response whose body makes no progress for the
// stall duration, so a hung connection becomes a retryable error instead
// of a hang.
type stallReader struct {
	body   io.ReadCloser
	timer  *time.Timer
	d      time.Duration
	cancel context.CancelFunc
	fired  chan struct{}
}

func newStallReader(body io.ReadCloser, d time.Duration, cancel context.CancelFunc) io.ReadCloser {
	s := &stallReader{body: body, d: d, cancel: cancel, fired: make(chan struct{})}
	s.timer = time.AfterFunc(d, func() { close(s.fired); cancel() })
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if n > 0 {
		s.timer.Reset(s.d)
	}
	if err != nil && err != io.EOF {
		select {
		case <-s.fired:
			err = errStalled
		default:
			err = transientError{err}
		}
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.timer.Stop()
	err := s.body.Close()
	s.cancel()
	return err
}

func newTransport(u *url.URL, o *Options) (transport, error) {
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("file URL with host %q", u.Host)
		}
		if u.User != nil {
			return nil, errors.New("file URL with credentials")
		}
		return fileTransport{dir: u.Path}, nil
	case "http", "https":
		base := *u
		base.User = nil
		t := &httpTransport{base: &base, client: o.httpClient(), retry: o.retry(), stall: o.stallTimeout()}
		switch {
		case u.User != nil:
			// As curl: the URL's userinfo, before any netrc entry.
			m := &netrcMachine{login: u.User.Username()}
			m.password, _ = u.User.Password()
			t.auth = m.basic
		case o.Netrc != nil:
			if m := o.Netrc.lookup(u.Hostname()); m != nil {
				t.auth = m.apply
			}
		}
		if t.auth != nil {
			t.client = credentialRedirects(t.client)
		}
		return t, nil
	case "s3":
		return newS3Transport(u, o)
	default:
		return nil, fmt.Errorf("unsupported scheme %q (want file, http, https or s3)", u.Scheme)
	}
}

// Netrc holds credentials in curl's .netrc format, as Nix's netrc-file.
// An entry whose login is "bearer" sends its password as a bearer token
// (attic, private caches behind an API gateway); others use basic auth.
type Netrc struct{ machines map[string]*netrcMachine }

type netrcMachine struct{ login, password string }

func (m *netrcMachine) apply(r *http.Request) {
	if m.login == "bearer" {
		r.Header.Set("Authorization", "Bearer "+m.password)
		return
	}
	m.basic(r)
}

func (m *netrcMachine) basic(r *http.Request) { r.SetBasicAuth(m.login, m.password) }

// credentialRedirects returns a copy of c for a cache with credentials
// (URL userinfo, a netrc entry: basic auth or a bearer token), whose
// redirects keep them to the cache's own origin, its scheme, host and
// port. net/http alone drops the Authorization header only when the host
// name changes to one that is not a subdomain: it would send it to
// another port of the same host (another service, perhaps another user's)
// and in clear text after a downgrade from https to http. Here:
//
//   - same scheme, host and port: followed, with the credentials;
//   - https to http, to any host: refused;
//   - the same host name on another port or scheme: refused, since the
//     credentials were given for that host and a cache has no reason to
//     move between its own services (configure the URL it redirects to);
//   - another host name (subdomains too): followed without the
//     credentials, as curl does. This is how a private cache hands
//     a NAR to object storage or a CDN with a pre-signed URL (attic with
//     S3 does), and the credentials are never sent there.
//
// A refusal is a *redirectError: not retried, reported with the cache.
func credentialRedirects(c *http.Client) *http.Client {
	cc := *c
	next := c.CheckRedirect
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if err := checkCredentialRedirect(via[0].URL, req); err != nil {
			return err
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &cc
}

// redirectError is a redirect refused because it would take a cache's
// credentials out of the cache's origin.
type redirectError struct {
	to  string // redacted
	why string
}

func (e *redirectError) Error() string {
	return fmt.Sprintf("redirect to %s refused: %s", e.to, e.why)
}

// checkCredentialRedirect applies credentialRedirects' rule to req, a
// redirect of a request to from.
func checkCredentialRedirect(from *url.URL, req *http.Request) error {
	to := req.URL
	switch {
	case from.Scheme == "https" && to.Scheme != "https":
		return &redirectError{fetchapi.RedactedURL(to), "it leaves https while the cache has credentials"}
	case sameOrigin(from, to):
		return nil
	case strings.EqualFold(from.Hostname(), to.Hostname()):
		return &redirectError{fetchapi.RedactedURL(to), "the cache's credentials are only sent to " + from.Scheme + "://" + from.Host}
	}
	req.Header.Del("Authorization")
	return nil
}

func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

// port is u's port, the scheme's default if it names none.
func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

func (n *Netrc) lookup(host string) *netrcMachine {
	if m, ok := n.machines[host]; ok {
		return m
	}
	return n.machines[""]
}

// ParseNetrc reads a netrc file ("machine H login L password P", "default").
func ParseNetrc(path string) (*Netrc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("netrc: %w", err)
	}
	n := &Netrc{machines: map[string]*netrcMachine{}}
	var cur *netrcMachine
	fields := strings.Fields(string(data))
	for i := 0; i < len(fields); i++ {
		arg := func() (string, error) {
			if i+1 >= len(fields) {
				return "", fmt.Errorf("netrc %s: %q without a value", path, fields[i])
			}
			i++
			return fields[i], nil
		}
		switch fields[i] {
		case "machine":
			host, err := arg()
			if err != nil {
				return nil, err
			}
			cur = &netrcMachine{}
			n.machines[host] = cur
		case "default":
			cur = &netrcMachine{}
			n.machines[""] = cur
		case "login", "password", "account":
			v, err := arg()
			if err != nil {
				return nil, err
			}
			if cur == nil {
				return nil, fmt.Errorf("netrc %s: %q before any machine", path, fields[i-1])
			}
			switch fields[i-1] {
			case "login":
				cur.login = v
			case "password":
				cur.password = v
			}
		}
	}
	return n, nil
}
