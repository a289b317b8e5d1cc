package fetch

import (
	"net/http"
	"net/url"
	"testing"
)

// TestCredentialRedirectRule is credentialRedirects' rule case by case,
// including what the servers of TestRedirectsKeepCredentialsHome cannot
// show on 127.0.0.1: a subdomain, to which net/http alone would send the
// Authorization header.
func TestCredentialRedirectRule(t *testing.T) {
	for _, c := range []struct {
		from, to string
		refused  bool
		keep     bool // Authorization still set
	}{
		{"https://cache.example/a", "https://cache.example/b", false, true},
		{"https://cache.example/a", "https://CACHE.example:443/b", false, true},
		{"http://cache.example:80/a", "http://cache.example/b", false, true},
		{"https://cache.example/a", "https://cache.example:8443/b", true, false},
		{"http://cache.example:8080/a", "http://cache.example:8081/b", true, false},
		{"https://cache.example/a", "http://cache.example/b", true, false},
		{"https://cache.example/a", "http://cdn.example/b", true, false},
		{"http://cache.example/a", "https://cache.example/b", true, false},
		{"https://cache.example/a", "https://objects.cache.example/b", false, false},
		{"https://cache.example/a", "https://s3.example/b?X-Amz-Signature=1", false, false},
		{"http://cache.example/a", "http://s3.example/b", false, false},
	} {
		from, _ := url.Parse(c.from)
		to, _ := url.Parse(c.to)
		req := &http.Request{URL: to, Header: http.Header{"Authorization": {"Bearer t"}}}
		err := checkCredentialRedirect(from, req)
		if (err != nil) != c.refused {
			t.Errorf("%s -> %s: %v, want refused %v", c.from, c.to, err, c.refused)
		}
		if err == nil && (req.Header.Get("Authorization") != "") != c.keep {
			t.Errorf("%s -> %s: Authorization kept %v, want %v", c.from, c.to, !c.keep, c.keep)
		}
	}
}
