package fetch_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/s3test"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

const s3Bucket = "nix-cache"

// s3Server starts weed for the test (a few seconds) with the fixture's
// xz cache uploaded as is into the bucket s3Bucket.
func s3Server(t *testing.T) *s3test.Server {
	t.Helper()
	_, _, caches := fixture(t)
	start := time.Now()
	srv := s3test.Start(t)
	t.Logf("weed ready in %v", time.Since(start).Round(time.Millisecond))
	srv.UploadCache(t, s3Bucket, caches["xz"])
	return srv
}

// s3Opts points this process's AWS SDK at a shared credentials file with
// the server's keys ("default") and the given other profiles, and
// returns fetch options for the substituters.
func s3Opts(t *testing.T, srv *s3test.Server, profiles map[string]string, substituters ...string) fetch.Options {
	t.Helper()
	_, key, _ := fixture(t)
	s3test.SetAWSEnv(t, srv.WriteSharedConfig(t, t.TempDir(), profiles))
	return fetch.Options{Substituters: substituters, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)},
		Retry: fetch.RetryPolicy{Attempts: 4, Backoff: 10 * time.Millisecond}}
}

func s3URL(bucket, endpoint string, extra ...string) string {
	u := "s3://" + bucket + "?endpoint=" + url.QueryEscape(endpoint) + "&region=" + s3test.Region
	for _, e := range extra {
		u += "&" + e
	}
	return u
}

// TestS3: one real S3 server (weed takes seconds to start) for the
// subtests below.
func TestS3(t *testing.T) {
	srv := s3Server(t)
	t.Run("fetch", func(t *testing.T) { testS3Fetch(t, srv) })
	t.Run("priority", func(t *testing.T) { testS3Priority(t, srv) })
	t.Run("errors", func(t *testing.T) { testS3Errors(t, srv) })
}

// testS3Fetch: a closure in a bucket of a real S3 server is fetched,
// with the endpoint spelled both ways Nix takes it, and real Nix
// verifies the store.
func testS3Fetch(t *testing.T, srv *s3test.Server) {
	fx, _, _ := fixture(t)
	hostPort := strings.TrimPrefix(srv.Endpoint, "http://")
	for _, sub := range []string{
		s3URL(s3Bucket, srv.Endpoint),
		"s3://" + s3Bucket + "?endpoint=" + hostPort + "&scheme=http",
	} {
		root := t.TempDir()
		res, err := fetchInto(t, root, s3Opts(t, srv, nil, sub), fx.Root)
		if err != nil {
			t.Fatalf("%s: %v", sub, err)
		}
		if len(res.Fetched) != len(fx.Closure) {
			t.Errorf("%s: fetched %d paths, want %d", sub, len(res.Fetched), len(fx.Closure))
		}
		if len(res.CacheBytes) != 1 {
			t.Errorf("%s: bytes by cache %v, want one S3 cache", sub, res.CacheBytes)
		}
		for name := range res.CacheBytes {
			if !strings.HasPrefix(name, "s3://"+s3Bucket+"?endpoint=") {
				t.Errorf("cache named %q, want s3://%s with its endpoint", name, s3Bucket)
			}
		}
		nixtest.Verify(t, root)
	}
}

// testS3Priority: an S3 cache takes its place among the others by
// priority, like any cache.
func testS3Priority(t *testing.T, srv *s3test.Server) {
	fx, _, caches := fixture(t)
	s3c := s3URL(s3Bucket, srv.Endpoint)
	file := "file://" + caches["zstd"]
	for _, tc := range []struct {
		subs []string
		want string // prefix of the one cache that served every byte
	}{
		{[]string{s3c + "&priority=10", file + "?priority=20"}, "s3://"},
		{[]string{s3c + "&priority=30", file + "?priority=20"}, "file://"},
	} {
		root := t.TempDir()
		res, err := fetchInto(t, root, s3Opts(t, srv, nil, tc.subs...), fx.Root)
		if err != nil {
			t.Fatalf("%v: %v", tc.subs, err)
		}
		if len(res.CacheBytes) != 1 {
			t.Errorf("%v: bytes by cache %v, want all from the %s cache", tc.subs, res.CacheBytes, tc.want)
		}
		for name := range res.CacheBytes {
			if !strings.HasPrefix(name, tc.want) {
				t.Errorf("%v: bytes by cache %v, want all from the %s cache", tc.subs, res.CacheBytes, tc.want)
			}
		}
		nixtest.Verify(t, root)
	}
}

// faultProxy forwards to the S3 server and answers the requests for
// which fail returns true with S3's 503 SlowDown instead: weed cannot be
// made to throttle on demand. It counts the requests.
func faultProxy(t *testing.T, endpoint string, fail func(n int64) bool) (string, *atomic.Int64) {
	t.Helper()
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail(n.Add(1)) {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`))
			return
		}
		// The request was signed for the proxy's host; it goes on as is.
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

// testS3Errors: wrong credentials, a missing bucket and no credentials
// at all fail at once with an error that names the cache and says what
// is wrong; a 503 storm is retried as an HTTP cache's 503 and ends
// "unavailable", and one that passes is ridden out.
func testS3Errors(t *testing.T, srv *s3test.Server) {
	fx, _, _ := fixture(t)
	for _, tc := range []struct {
		name     string
		bucket   string
		profile  string
		noCreds  bool
		fail     func(n int64) bool
		kind     string
		want     []string
		requests int64 // to the server; 0: not checked
	}{
		{name: "wrong credentials", bucket: s3Bucket, profile: "wrong", kind: fetchapi.KindOther,
			want: []string{"refused the node's AWS credentials", "SignatureDoesNotMatch"}, requests: 1},
		{name: "missing bucket", bucket: "no-such-bucket", kind: fetchapi.KindOther,
			want: []string{`bucket "no-such-bucket" does not exist`, "NoSuchBucket"}, requests: 1},
		{name: "no credentials", bucket: s3Bucket, noCreds: true, kind: fetchapi.KindOther,
			want: []string{"no usable AWS credentials"}, requests: 0},
		{name: "503 storm", bucket: s3Bucket, fail: func(int64) bool { return true }, kind: fetchapi.KindUnavailable,
			want: []string{"HTTP 503 SlowDown", "after 4 attempts"}, requests: 4},
		{name: "503 storm that passes", bucket: s3Bucket, fail: func(n int64) bool { return n <= 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fail := tc.fail
			if fail == nil {
				fail = func(int64) bool { return false }
			}
			endpoint, requests := faultProxy(t, srv.Endpoint, fail)
			sub := s3URL(tc.bucket, endpoint)
			if tc.profile != "" {
				sub += "&profile=" + tc.profile
			}
			opts := s3Opts(t, srv, map[string]string{"wrong": "not-the-secret"}, sub)
			if tc.noCreds {
				s3test.SetAWSEnv(t, []string{"AWS_EC2_METADATA_DISABLED=true",
					"AWS_SHARED_CREDENTIALS_FILE=/nonexistent/credentials", "AWS_CONFIG_FILE=/nonexistent/config"})
			}
			root := t.TempDir()
			_, err := fetchInto(t, root, opts, fx.Root)
			if tc.kind == "" {
				if err != nil {
					t.Fatal(err)
				}
				nixtest.Verify(t, root)
				return
			}
			if err == nil {
				t.Fatal("fetch succeeded")
			}
			msg := err.Error()
			if k := fetch.ErrorKind(err); k != tc.kind {
				t.Errorf("kind %q, want %q (%v)", k, tc.kind, err)
			}
			for _, w := range append(tc.want, "s3://"+tc.bucket) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if strings.Contains(msg, srv.SecretKey) || strings.Contains(msg, "not-the-secret") {
				t.Errorf("error %q shows a secret key", msg)
			}
			if tc.requests > 0 && requests.Load() != tc.requests {
				t.Errorf("%d requests to the server, want %d", requests.Load(), tc.requests)
			}
		})
	}
}

// TestS3URL: s3:// substituters as Nix spells them; what Nix would not
// take, or storepkg cannot honour, is refused naming the cache and the
// fault, never showing a secret.
func TestS3URL(t *testing.T) {
	for _, tc := range []struct {
		raw, name, err string
	}{
		{raw: "s3://b", name: "s3://b"},
		{raw: "s3://b?region=eu-west-1&profile=p&priority=5", name: "s3://b?profile=p&region=eu-west-1"},
		{raw: "s3://b?endpoint=minio.example:9000&scheme=http", name: "s3://b?endpoint=minio.example:9000&scheme=http"},
		{raw: "s3://b?endpoint=https://s3.example", name: "s3://b?endpoint=https://s3.example"},
		{raw: "s3://b?scheme=http", name: "s3://b?scheme=http"},
		{raw: "s3://key:secret@b", err: "S3 credentials come from the node's AWS configuration"},
		{raw: "s3://b?endpoint=http://key:secret@h", err: "with credentials"},
		{raw: "s3://b?endpoint=http://h&scheme=https", err: `and scheme "https" disagree`},
		{raw: "s3://b?scheme=ftp", err: `scheme "ftp": want http or https`},
		{raw: "s3://b/prefix", err: `s3 URL with a path "/prefix"`},
		{raw: "s3://b:9000", err: "s3 URL with a port"},
		{raw: "s3://?region=x", err: "without a bucket"},
		{raw: "s3://b?narinfo-compression=xz", err: `unknown parameter "narinfo-compression"`},
		{raw: "https://h?region=x", err: `unknown parameter "region"`},
	} {
		c, err := fetch.NewCache(tc.raw, &fetch.Options{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.raw, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: err %v shows the secret", tc.raw, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.raw, err)
			continue
		}
		if c.URL != tc.name {
			t.Errorf("%s: named %q, want %q", tc.raw, c.URL, tc.name)
		}
	}
}
