package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/storepkg/storepkg/pkg/fetchapi"
)

// s3Params are the query parameters of an s3:// substituter, spelled and
// defaulted as Nix's S3 binary cache store does.
var s3Params = map[string]bool{"region": true, "endpoint": true, "scheme": true, "profile": true}

// isS3Param reports whether k is one of s3Params.
func isS3Param(k string) bool { return s3Params[k] }

// redactS3 is raw, the name of the s3:// URL u, with any password in its
// endpoint parameter (refused, but named in the refusal) hidden.
func redactS3(raw string, u *url.URL) string {
	q := u.Query()
	e := q.Get("endpoint")
	if !strings.Contains(e, "@") {
		return raw
	}
	q.Set("endpoint", fetchapi.RedactURL(e))
	v := *u
	v.RawQuery = q.Encode()
	return fetchapi.RedactedURL(&v)
}

// s3Transport reads a cache in an S3 bucket (s3://bucket?region=...&
// endpoint=...&scheme=...&profile=...). Credentials come from the AWS
// SDK's default chains (environment, shared config and credentials files
// with the profile, web identity, container and instance metadata), in
// the process that fetches: the fetch child, which runs as the shim's
// child on the node. Never from the URL, and never from a pod.
type s3Transport struct {
	bucket    string
	region    string
	endpoint  string // "" for AWS's own
	pathStyle bool
	profile   string
	http      *http.Client
	retry     RetryPolicy
	stall     time.Duration

	mu     sync.Mutex
	client *s3.Client
}

// newS3Transport checks an s3:// URL, whose query holds only s3Params.
func newS3Transport(u *url.URL, o *Options) (*s3Transport, error) {
	if u.User != nil {
		return nil, errors.New("s3 URL with credentials: S3 credentials come from the node's AWS configuration (environment, shared credentials file, web identity, instance metadata), never from the URL")
	}
	if u.Host == "" {
		return nil, errors.New("s3 URL without a bucket (want s3://bucket)")
	}
	if u.Port() != "" {
		return nil, fmt.Errorf("s3 URL with a port: %q is not a bucket name (an S3-compatible server goes in ?endpoint=host:port)", u.Host)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("s3 URL with a path %q: Nix reads a cache at the root of a bucket (s3://bucket)", u.Path)
	}
	q := u.Query()
	t := &s3Transport{
		bucket:  u.Host,
		region:  q.Get("region"),
		profile: q.Get("profile"),
		http:    o.httpClient(),
		retry:   o.retry(),
		stall:   o.stallTimeout(),
	}
	if t.region == "" {
		t.region = "us-east-1" // Nix's default
	}
	scheme := q.Get("scheme")
	if scheme != "" && scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("scheme %q: want http or https", scheme)
	}
	endpoint := q.Get("endpoint")
	switch {
	case endpoint != "":
		// As Nix (the AWS C++ SDK's endpointOverride): a bare host[:port]
		// takes the scheme parameter, https by default; an endpoint with
		// a scheme keeps its own. With an endpoint, buckets are
		// addressed by path (host/bucket/key), as Nix does: S3-compatible
		// servers rarely have a DNS name per bucket.
		if !strings.Contains(endpoint, "://") {
			s := scheme
			if s == "" {
				s = "https"
			}
			endpoint = s + "://" + endpoint
		}
		eu, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: not a URL", fetchapi.RedactURL(endpoint))
		}
		switch {
		case eu.Scheme != "http" && eu.Scheme != "https":
			return nil, fmt.Errorf("endpoint %q: scheme %q, want http or https", fetchapi.RedactURL(endpoint), eu.Scheme)
		case scheme != "" && eu.Scheme != scheme:
			return nil, fmt.Errorf("endpoint %q and scheme %q disagree", fetchapi.RedactURL(endpoint), scheme)
		case eu.User != nil:
			return nil, fmt.Errorf("endpoint %q with credentials: S3 credentials come from the node's AWS configuration", fetchapi.RedactURL(endpoint))
		case eu.Host == "":
			return nil, fmt.Errorf("endpoint %q without a host", endpoint)
		case eu.RawQuery != "" || eu.Fragment != "":
			return nil, fmt.Errorf("endpoint %q with a query or fragment", endpoint)
		}
		t.endpoint, t.pathStyle = eu.String(), true
	case scheme == "http":
		// AWS over plain http: the region's endpoint, buckets by name.
		t.endpoint = "http://s3." + t.region + ".amazonaws.com"
	}
	return t, nil
}

// s3Client loads the AWS configuration on first use, not when the cache
// is parsed: reading it may block on instance metadata, and an S3 cache
// the node cannot use must not stop the fetch from its other caches.
func (t *s3Transport) s3Client(ctx context.Context) (*s3.Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client != nil {
		return t.client, nil
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(t.region),
		config.WithHTTPClient(t.http),
		// Retries are ours (RetryPolicy), as for HTTP caches: the
		// SDK's would multiply them.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if t.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(t.profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("AWS configuration: %w", err)
	}
	// Resolve the credentials now, so that none found is said as such
	// and not as the first request's failure.
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("no usable AWS credentials (environment, shared credentials file%s, web identity, container or instance metadata): %w", profileNote(t.profile), err)
	}
	t.client = s3.NewFromConfig(cfg, func(so *s3.Options) {
		if t.endpoint != "" {
			so.BaseEndpoint = aws.String(t.endpoint)
		}
		so.UsePathStyle = t.pathStyle
		// The narinfo's signed hashes check every byte already.
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return t.client, nil
}

func profileNote(p string) string {
	if p == "" {
		return ""
	}
	return " with profile " + p
}

func (t *s3Transport) get(ctx context.Context, rel string) (io.ReadCloser, error) {
	// The name comes from the cache (a narinfo's URL, which no signature
	// covers): a key that climbs out of the bucket's root could, with
	// path-style addressing and a server that cleans paths, name another
	// bucket the node's credentials can read.
	if rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("%q is not a key inside the bucket %s", rel, t.bucket)
	}
	client, err := t.s3Client(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(t.bucket), Key: aws.String(rel)})
	if err != nil {
		cancel()
		return nil, t.classify(err)
	}
	if enc := aws.ToString(out.ContentEncoding); enc != "" && enc != "identity" {
		out.Body.Close()
		cancel()
		return nil, fmt.Errorf("s3://%s/%s has Content-Encoding %q (written with narinfo-compression?): storepkg reads only files stored as they are", t.bucket, rel, enc)
	}
	return newStallReader(out.Body, t.stall, cancel), nil
}

// credentialCodes are S3's answers to credentials it does not accept.
var credentialCodes = map[string]bool{
	"InvalidAccessKeyId":    true,
	"SignatureDoesNotMatch": true,
	"ExpiredToken":          true,
	"InvalidToken":          true,
	"TokenRefreshRequired":  true,
	"InvalidSecurity":       true,
}

// classify turns the SDK's error into this package's: not found, a
// transient failure to retry (5xx, 429, 408, no answer), or a permanent
// one that says what to fix. The SDK's own text names its operation and
// request ID, noise in a pod's events; the code and message stay.
func (t *s3Transport) classify(err error) error {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status := re.HTTPStatusCode()
		code, msg := "", ""
		var ae smithy.APIError
		if errors.As(err, &ae) {
			code, msg = ae.ErrorCode(), ae.ErrorMessage()
		}
		what := fmt.Sprintf("HTTP %d", status)
		if code != "" {
			what += " " + code
		}
		if msg != "" {
			what += ": " + msg
		}
		switch {
		case code == "NoSuchBucket":
			return fmt.Errorf("bucket %q does not exist (%s)", t.bucket, what)
		case status == http.StatusNotFound:
			return ErrNotFound
		case credentialCodes[code]:
			return fmt.Errorf("the S3 server refused the node's AWS credentials (%s)", what)
		case status == http.StatusForbidden:
			// Unlike an HTTP cache's 403, not "not found": S3 answers a
			// missing key with 403 only to credentials without
			// s3:ListBucket, and Nix documents that a cache's readers
			// need it.
			return fmt.Errorf("access denied (%s): the node's AWS credentials need s3:GetObject and s3:ListBucket on bucket %s", what, t.bucket)
		case status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
			return transientError{errors.New(what)}
		default:
			return errors.New(what)
		}
	}
	var se *smithyhttp.RequestSendError
	if errors.As(err, &se) {
		return transientError{se.Err}
	}
	return err
}
