package fetch_test

import (
	"crypto/ed25519"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// The credentials of the tests below; none of them may ever show.
const (
	credUser     = "nixuser"
	credPassword = "s3cret-9f2c"
)

// smallCache writes a signed cache of a three-path closure (no Nix needed).
func smallCache(t *testing.T) (dir string, root storepath.Path, key narinfo.SecretKey) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	key = narinfo.SecretKey{Name: "creds-1", Key: priv}
	dir = filepath.Join(t.TempDir(), "cache")
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	root, _, err = w.Synthetic("creds", 3)
	if err != nil {
		t.Fatal(err)
	}
	return dir, root, key
}

// authorized reports whether r carries the test's basic credentials.
func authorized(r *http.Request) bool {
	u, p, ok := r.BasicAuth()
	return ok && u == credUser && p == credPassword
}

// TestCredentialsNotShown: a substituter URL with userinfo works, and its
// password appears in no error, no PathError.Cache, no per-cache byte
// count (the keys of the fetch record's caches and of the agent's metric
// label) and no error of a malformed substituter.
func TestCredentialsNotShown(t *testing.T) {
	dir, root, key := smallCache(t)
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !authorized(r):
			http.Error(w, "who are you", http.StatusUnauthorized)
		case strings.HasPrefix(r.URL.Path, "/gone/nar/"):
			http.Error(w, "gone", http.StatusGone)
		default:
			r.URL.Path = strings.TrimPrefix(r.URL.Path, "/gone")
			files.ServeHTTP(w, r)
		}
	}))
	defer srv.Close()
	with := func(password string) string {
		return strings.Replace(srv.URL, "://", "://"+credUser+":"+password+"@", 1)
	}
	redacted := with("xxxxx")
	opts := func(url string) fetch.Options {
		return fetch.Options{Substituters: []string{url}, TrustedKeys: []narinfo.PublicKey{key.Public()},
			Retry: fetch.RetryPolicy{Attempts: 1}}
	}
	noPassword := func(t *testing.T, what, s string) {
		t.Helper()
		if strings.Contains(s, credPassword) || strings.Contains(s, "wrong-"+credPassword) {
			t.Errorf("%s shows the password: %s", what, s)
		}
	}

	res, err := fetchInto(t, t.TempDir(), opts(with(credPassword)), root.Absolute())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.CacheBytes) != 1 || res.CacheBytes[redacted] == 0 {
		t.Errorf("cache bytes %v, want all under %s", res.CacheBytes, redacted)
	}

	missing := cachetest.MakePath("creds", "missing")
	for name, c := range map[string]struct {
		url, path string
		kind      string
	}{
		"wrong password": {with("wrong-" + credPassword), root.Absolute(), fetchapi.KindOther},
		"missing path":   {with(credPassword), missing.Absolute(), fetchapi.KindNotFound},
		"NAR refused":    {with(credPassword) + "/gone", root.Absolute(), fetchapi.KindOther},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := fetchInto(t, t.TempDir(), opts(c.url), c.path)
			if err == nil {
				t.Fatal("fetched")
			}
			t.Log(err)
			noPassword(t, "the error", err.Error())
			if !strings.Contains(err.Error(), credUser+":xxxxx@") {
				t.Errorf("the error does not name the cache: %v", err)
			}
			if k := fetch.ErrorKind(err); k != c.kind {
				t.Errorf("kind %s, want %s", k, c.kind)
			}
			var pe *fetch.PathError
			if errors.As(err, &pe) && pe.Cache != "" {
				noPassword(t, "PathError.Cache", pe.Cache)
			}
			if name == "NAR refused" && (pe == nil || pe.Cache != redacted+"/gone") {
				t.Errorf("PathError %+v does not name the cache %s/gone", pe, redacted)
			}
		})
	}

	for _, raw := range []string{
		with(credPassword) + "?bogus=1",
		with(credPassword) + "?priority=high",
		"ftp://" + credUser + ":" + credPassword + "@host/cache",
		"http://" + credUser + ":" + credPassword + "%zz@host/cache",
		"http://" + credUser + ":" + credPassword + "@[::1/cache",
		credUser + ":" + credPassword + "@host/cache",
		"https:" + credUser + ":" + credPassword + "@host/cache",
		"file://" + credUser + ":" + credPassword + "@/cache",
	} {
		_, err := fetch.NewCache(raw, &fetch.Options{})
		if err == nil {
			t.Errorf("%s: accepted", fetchapi.RedactURL(raw))
			continue
		}
		noPassword(t, "NewCache's error", err.Error())
	}
}

// TestTokenAsUserRedacted: a user name given without a password is often
// the secret itself (https://TOKEN@cache): it is redacted like a password.
func TestTokenAsUserRedacted(t *testing.T) {
	const token = "ghp_secrettoken123"
	c, err := fetch.NewCache("https://"+token+"@cache.example/nix", &fetch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "https://xxxxx@cache.example/nix" {
		t.Errorf("cache named %q", c.URL)
	}
	for _, raw := range []string{
		"https://" + token + "@cache.example/nix?bogus=1",
		"http://" + token + "%zz@host/cache",
		"https:" + token + "@host/cache",
	} {
		_, err := fetch.NewCache(raw, &fetch.Options{})
		if err == nil {
			t.Errorf("%s: accepted", fetchapi.RedactURL(raw))
		} else if strings.Contains(err.Error(), token) {
			t.Errorf("NewCache's error shows the token: %v", err)
		}
	}
}
