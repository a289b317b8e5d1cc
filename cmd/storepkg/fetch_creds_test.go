package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestFetchHidesURLCredentials runs `storepkg fetch --json` against a
// cache behind basic auth named by a URL with userinfo: the fetch works,
// and the password is in none of what leaves the child: its error, its
// JSON lines (result with per-cache bytes, failure with the cache), and
// the fetch record the shim makes of them (world-readable under /run,
// read by the agent, whose metric label storepkg_fetched_bytes_total{cache}
// and pod events are the record's cache keys and failure message).
func TestFetchHidesURLCredentials(t *testing.T) {
	const password = "s3cret-7d1e"
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "creds-1", Key: priv}
	dir := filepath.Join(t.TempDir(), "cache")
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	root, _, err := w.Synthetic("cli-creds", 3)
	if err != nil {
		t.Fatal(err)
	}
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "nixuser" || p != password {
			http.Error(rw, "who are you", http.StatusUnauthorized)
			return
		}
		if rest, ok := strings.CutPrefix(r.URL.Path, "/gone"); ok {
			if strings.HasPrefix(rest, "/nar/") {
				http.Error(rw, "gone", http.StatusGone)
				return
			}
			r.URL.Path = rest
		}
		files.ServeHTTP(rw, r)
	}))
	defer srv.Close()
	with := func(pw string) string { return strings.Replace(srv.URL, "://", "://nixuser:"+pw+"@", 1) }

	// fetchJSON runs the command in this process, its stdout in a file.
	fetchJSON := func(t *testing.T, substituter, path string) (*fetchapi.Result, *fetchapi.Failure, string, error) {
		t.Helper()
		out, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
		if err != nil {
			t.Fatal(err)
		}
		stdout := os.Stdout
		os.Stdout = out
		cmd := newRootCommand()
		cmd.SetArgs([]string{"fetch", "--json", "--root", t.TempDir(), "--substituter", substituter,
			"--trusted-public-key", key.Public().String(), path})
		runErr := cmd.ExecuteContext(context.Background())
		os.Stdout = stdout
		out.Close()
		data, err := os.ReadFile(out.Name())
		if err != nil {
			t.Fatal(err)
		}
		var (
			res     *fetchapi.Result
			failure *fetchapi.Failure
		)
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			var rep fetchapi.Report
			if err := json.Unmarshal(sc.Bytes(), &rep); err != nil {
				t.Fatalf("%q: %v", sc.Text(), err)
			}
			if rep.Result != nil {
				res = rep.Result
			}
			if rep.Error != nil {
				failure = rep.Error
			}
		}
		return res, failure, string(data), runErr
	}
	// record is the fetch record the shim writes of a result or failure.
	record := func(t *testing.T, res *fetchapi.Result, failure *fetchapi.Failure) string {
		t.Helper()
		rec := &fetchrecord.Record{ID: "creds", Roots: []string{root.Absolute()}, State: fetchrecord.Done}
		if res != nil {
			rec.Caches = res.CacheBytes
		}
		if failure != nil {
			rec.State, rec.Error = fetchrecord.Failed, failure
		}
		rdir := t.TempDir()
		if err := fetchrecord.Write(rdir, rec); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(fetchrecord.File(rdir, rec.ID))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	check := func(t *testing.T, what, s string) {
		t.Helper()
		if strings.Contains(s, password) {
			t.Errorf("%s shows the password: %s", what, s)
		}
	}

	res, failure, out, err := fetchJSON(t, with(password), root.Absolute())
	if err != nil || failure != nil || res == nil {
		t.Fatalf("fetch: %v, %+v\n%s", err, failure, out)
	}
	check(t, "--json output", out)
	check(t, "the fetch record", record(t, res, nil))
	if res.CacheBytes[with("xxxxx")] == 0 {
		t.Errorf("cacheBytes %v: nothing under %s", res.CacheBytes, with("xxxxx"))
	}

	for name, c := range map[string]struct{ substituter, kind, cache string }{
		"wrong password":    {with("wrong-" + password), fetchapi.KindOther, ""},
		"NAR gone":          {with(password) + "/gone", fetchapi.KindOther, with("xxxxx") + "/gone"},
		"unknown parameter": {with(password) + "?prio=1", fetchapi.KindInvalidArgument, ""},
	} {
		t.Run(name, func(t *testing.T) {
			res, failure, out, err := fetchJSON(t, c.substituter, root.Absolute())
			if err == nil || failure == nil || res != nil {
				t.Fatalf("fetch: %v, %+v\n%s", err, failure, out)
			}
			t.Log(err)
			check(t, "the error", err.Error())
			check(t, "--json output", out)
			check(t, "the fetch record", record(t, nil, failure))
			if failure.Kind != c.kind || failure.Cache != c.cache || !strings.Contains(failure.Message, "nixuser:xxxxx@") {
				t.Errorf("failure %+v: want kind %s, cache %q, a message naming the cache", failure, c.kind, c.cache)
			}
		})
	}
}
