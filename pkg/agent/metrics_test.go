package agent

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/metricstest"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/procid"
)

// TestServesNoCredentials: /metrics and /healthz are served without
// authentication on the pod's IP, so nothing a record holds may reach
// them in clear: records that name caches with a password, with a token
// as the user name, with a token in the query, and a failure whose kind
// is free text, as a shim of another version (or anything that writes
// the node's status directory) might write them.
func TestServesNoCredentials(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := filepath.Join(t.TempDir(), "fetches")
	a, err := New(ctx, Config{StoreRoot: t.TempDir(), StatusDir: dir, ListenAddress: "127.0.0.1:0",
		PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		a.Wait()
	}()

	const secret = "s3cret"
	now := time.Now()
	caches := map[string]int64{
		"https://alice:" + secret + "@cache.example/private":             10,
		"https://" + secret + "@cache2.example":                          20,
		"https://cache3.example/c?X-Amz-Signature=" + secret:             30,
		"https://cache4.example/c#" + secret:                             40,
		"cache5:" + secret + "@host":                                     50, // opaque: not a hierarchical URL
		"http://[::1" + secret + "@cache6.example":                       60, // does not parse
		"https://bob:xxxxx@cache7.example":                               70, // as the fetch child names it
		"https://alice:" + secret + "@cache.example/private?x=" + secret: 1,
	}
	for i, r := range []fetchrecord.Record{
		{State: fetchrecord.Done, Caches: caches},
		{State: fetchrecord.Failed, Caches: caches, Error: &fetchapi.Failure{
			Kind: "https://alice:" + secret + "@cache.example", Message: "cache https://alice:" + secret + "@cache.example: 401"}},
		{State: fetchrecord.Failed, Error: &fetchapi.Failure{Kind: "future_kind"}},
	} {
		r.ID = "r" + string(rune('0'+i))
		r.Pod = fetchrecord.Pod{Namespace: "ns", Name: "p", UID: "u"}
		r.Roots = []string{"/nix/store/00000000000000000000000000000000-a"}
		r.Writer = procid.Self()
		r.Start, r.Updated, r.End = now.Add(-time.Second), now, now
		if err := fetchrecord.Write(dir, &r); err != nil {
			t.Fatal(err)
		}
	}

	get := func(path string) string {
		t.Helper()
		resp, err := http.Get("http://" + a.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
		}
		return string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := metricstest.Scrape("http://" + a.Addr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if m.Get("storepkg_fetches_total", "result", "failure") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the records were not counted in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	metrics, healthz := get("/metrics"), get("/healthz")
	for name, body := range map[string]string{"/metrics": metrics, "/healthz": healthz} {
		if i := strings.Index(body, secret); i >= 0 {
			line := body[strings.LastIndexByte(body[:i], '\n')+1:]
			line, _, _ = strings.Cut(line, "\n")
			t.Errorf("%s shows a credential: %s", name, line)
		}
	}
	m, err := metricstest.Scrape("http://" + a.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cache string
		want  float64
	}{
		{"https://alice:xxxxx@cache.example/private", 2 * (10 + 1)},
		{"https://xxxxx@cache2.example", 2 * 20},
		{"https://cache3.example/c", 2 * 30},
		{"https://cache4.example/c", 2 * 40},
		{"xxxxx@host", 2 * 50},
		{"http://xxxxx@cache6.example", 2 * 60},
		{"https://bob:xxxxx@cache7.example", 2 * 70},
	} {
		if got := m.Get("storepkg_fetched_bytes_total", "cache", c.cache); got != c.want {
			t.Errorf("storepkg_fetched_bytes_total{cache=%q} = %v, want %v", c.cache, got, c.want)
		}
	}
	for kind, want := range map[string]float64{fetchapi.KindOther: 1, "future_kind": 1} {
		if got := m.Get("storepkg_fetch_failures_total", "reason", kind); got != want {
			t.Errorf("storepkg_fetch_failures_total{reason=%q} = %v, want %v", kind, got, want)
		}
	}
}
