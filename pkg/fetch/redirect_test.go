package fetch_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// witness is a cache server that serves anyone and records the
// Authorization header of every request it gets.
type witness struct {
	*httptest.Server
	mu   sync.Mutex
	auth []string
}

func newWitness(t *testing.T, dir string) *witness {
	w := &witness{}
	files := http.FileServer(http.Dir(dir))
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		w.auth = append(w.auth, r.Header.Get("Authorization"))
		w.mu.Unlock()
		files.ServeHTTP(rw, r)
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *witness) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.auth...)
}

// TestRedirectsKeepCredentialsHome attacks the redirect rule of a cache
// with credentials (credentialRedirects) with real servers on 127.0.0.1:
// the cache answers every authorized request with a redirect. To another
// port of the same host, or from https to http, the fetch fails naming the
// cache and the redirect, and the second server gets no request at all;
// to another host name it is followed without the credentials; within
// the cache's own origin they are kept.
func TestRedirectsKeepCredentialsHome(t *testing.T) {
	dir, root, key := smallCache(t)
	elsewhere := newWitness(t, dir)
	redirector := func(target string, tls bool) *httptest.Server {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "" {
				http.Error(w, "who are you", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, target+r.URL.Path, http.StatusFound)
		})
		var s *httptest.Server
		if tls {
			s = httptest.NewTLSServer(h)
		} else {
			s = httptest.NewServer(h)
		}
		t.Cleanup(s.Close)
		return s
	}
	otherPort := redirector(elsewhere.URL, false)
	downgrade := redirector(elsewhere.URL, true)
	otherHost := redirector(strings.Replace(elsewhere.URL, "127.0.0.1", "localhost", 1), false)
	files := http.FileServer(http.Dir(dir))
	home := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !authorized(r) {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		if rest, ok := strings.CutPrefix(r.URL.Path, "/real"); ok {
			r.URL.Path = rest
			files.ServeHTTP(w, r)
			return
		}
		http.Redirect(w, r, "/real"+r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(home.Close)

	netrc := func(t *testing.T, text string) *fetch.Netrc {
		file := filepath.Join(t.TempDir(), "netrc")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		n, err := fetch.ParseNetrc(file)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	basic := "machine 127.0.0.1 login " + credUser + " password " + credPassword + "\n"
	bearer := "machine 127.0.0.1 login bearer password " + credPassword + "\n"
	userinfo := func(s *httptest.Server) string {
		return strings.Replace(s.URL, "://", "://"+credUser+":"+credPassword+"@", 1)
	}
	for _, c := range []struct {
		name   string
		url    string // the substituter
		netrc  string
		client *http.Client
		ok     bool // the fetch succeeds
	}{
		{name: "other port, netrc basic", url: otherPort.URL, netrc: basic},
		{name: "other port, netrc bearer", url: otherPort.URL, netrc: bearer},
		{name: "other port, URL userinfo", url: userinfo(otherPort)},
		{name: "https to http, netrc", url: downgrade.URL, netrc: basic, client: downgrade.Client()},
		{name: "https to http, URL userinfo", url: userinfo(downgrade), client: downgrade.Client()},
		{name: "other host, netrc", url: otherHost.URL, netrc: basic, ok: true},
		{name: "other host, URL userinfo", url: userinfo(otherHost), ok: true},
		{name: "same origin, netrc basic", url: home.URL, netrc: basic, ok: true},
		{name: "same origin, URL userinfo", url: userinfo(home), ok: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(elsewhere.seen())
			opts := fetch.Options{Substituters: []string{c.url}, TrustedKeys: []narinfo.PublicKey{key.Public()}, HTTPClient: c.client}
			if c.netrc != "" {
				opts.Netrc = netrc(t, c.netrc)
			}
			res, err := fetchInto(t, t.TempDir(), opts, root.Absolute())
			got := elsewhere.seen()[before:]
			for _, a := range got {
				if a != "" {
					t.Errorf("the other server got Authorization %q", a)
				}
			}
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Fetched) != 3 {
					t.Errorf("fetched %d paths, want 3", len(res.Fetched))
				}
				if strings.HasPrefix(c.name, "other host") && len(got) == 0 {
					t.Error("the redirect to another host was not followed")
				}
				return
			}
			if len(got) != 0 {
				t.Errorf("the other server got %d requests after a refused redirect", len(got))
			}
			if err == nil {
				t.Fatal("the fetch succeeded through a refused redirect")
			}
			msg := err.Error()
			t.Log(msg)
			cache := fetchapi.RedactURL(c.url)
			if !strings.Contains(msg, "cache "+cache) || !strings.Contains(msg, "refused") || !strings.Contains(msg, "redirect to "+elsewhere.URL) {
				t.Errorf("the error does not name the cache %s and the refused redirect: %s", cache, msg)
			}
			if strings.Contains(msg, credPassword) {
				t.Errorf("the error shows the password: %s", msg)
			}
			if strings.Contains(msg, "attempts") {
				t.Errorf("a refused redirect was retried: %s", msg)
			}
		})
	}
}
