package fetchapi

import (
	"net/url"
	"strings"
)

// RedactedURL is u as url.URL.Redacted names it, and also with a user
// name that comes without a password replaced by "xxxxx": such a name is
// often the secret itself (https://TOKEN@cache.example).
func RedactedURL(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	if _, ok := u.User.Password(); ok {
		return u.Redacted()
	}
	v := *u
	v.User = url.User("xxxxx")
	return v.String()
}

// RedactURL is how a cache URL is named wherever this vocabulary carries
// one (results, failures, records, messages): raw as RedactedURL names
// it; a string that is not a hierarchical URL has everything between
// "://" (or its start) and its last "@" replaced by "xxxxx" instead, so a
// malformed URL cannot leak either.
func RedactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Opaque == "" {
		return RedactedURL(u)
	}
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return raw
	}
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 && i < at {
		start = i + len("://")
	}
	return raw[:start] + "xxxxx" + raw[at:]
}
