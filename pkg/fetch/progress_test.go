package fetch_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestProgressPerCache: a first cache signed by a key the node does not
// trust is refused path by path (counted as signature refusals); the
// second, trusted one serves everything, and the bytes are counted
// against it, in the progress reports and in the result. A tampered NAR
// counts as a hash refusal.
func TestProgressPerCache(t *testing.T) {
	fx, key, caches := fixture(t)
	stranger := nixtest.GenerateKey(t, t.TempDir(), "stranger-1")
	strangerSK := secretKey(t, stranger)
	untrustedDir := copyCache(t, caches["zstd"])
	for _, p := range fx.Closure {
		editNarinfo(t, untrustedDir, p, &strangerSK, func(*narinfo.NarInfo) {})
	}
	untrusted := nixtest.Serve(t, untrustedDir, nil)
	trusted := nixtest.Serve(t, caches["xz"], nil)

	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := fetch.New(st, fetch.Options{
		Substituters: []string{untrusted, trusted},
		TrustedKeys:  []narinfo.PublicKey{publicKey(t, key)},
		Progress:     func(fetchapi.Progress) { t.Error("Options.Progress called although FetchProgress names another") },
	})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var last fetchapi.Progress
	reports := 0
	res, err := f.FetchProgress(ctx, []storepath.Path{mustPath(t, fx.Root)}, func(p fetchapi.Progress) {
		mu.Lock()
		defer mu.Unlock()
		reports++
		if p.BytesDone < last.BytesDone || p.PathsDone < last.PathsDone {
			t.Errorf("progress went back: %+v after %+v", p, last)
		}
		last = p
	})
	if err != nil {
		t.Fatal(err)
	}
	n := len(fx.Closure)
	if len(res.Fetched) != n {
		t.Fatalf("fetched %d of %d", len(res.Fetched), n)
	}
	if want := map[string]int64{trusted: res.Downloaded}; len(res.CacheBytes) != 1 || res.CacheBytes[trusted] != res.Downloaded || res.Downloaded == 0 {
		t.Errorf("Result.CacheBytes = %v, want %v", res.CacheBytes, want)
	}
	mu.Lock()
	t.Logf("%d reports, last %+v", reports, last)
	if last.PathsDone != n || last.PathsTotal != n || last.PathsFetched != n {
		t.Errorf("last progress paths done/total/fetched %d/%d/%d, want %d", last.PathsDone, last.PathsTotal, last.PathsFetched, n)
	}
	if last.BytesDone != res.Downloaded || last.CacheBytes[trusted] != res.Downloaded || len(last.CacheBytes) != 1 {
		t.Errorf("last progress bytes %d, per cache %v; downloaded %d", last.BytesDone, last.CacheBytes, res.Downloaded)
	}
	if last.SignatureRefusals != n || last.HashRefusals != 0 {
		t.Errorf("refusals: signature %d hash %d, want %d and 0", last.SignatureRefusals, last.HashRefusals, n)
	}
	mu.Unlock()

	// Fetching again costs nothing and reports nothing.
	res, err = f.FetchProgress(ctx, []storepath.Path{mustPath(t, fx.Root)}, func(p fetchapi.Progress) { t.Errorf("report for a valid closure: %+v", p) })
	if err != nil || len(res.Fetched) != 0 || res.CacheBytes != nil {
		t.Errorf("second fetch: %+v, %v", res, err)
	}

	// Only the untrusted cache: the fetch fails at the first path, and the
	// refusal was reported before it did.
	st3, err := store.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st3.Close()
	f3, err := fetch.New(st3, fetch.Options{Substituters: []string{untrusted}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}})
	if err != nil {
		t.Fatal(err)
	}
	last = fetchapi.Progress{}
	_, err = f3.FetchProgress(ctx, []storepath.Path{mustPath(t, fx.Root)}, func(p fetchapi.Progress) { mu.Lock(); last = p; mu.Unlock() })
	if fetch.ErrorKind(err) != fetchapi.KindUntrusted {
		t.Fatalf("untrusted cache only: %v", err)
	}
	mu.Lock()
	if last.SignatureRefusals != 1 {
		t.Errorf("untrusted cache only: last progress %+v, want one signature refusal", last)
	}
	mu.Unlock()

	// A NAR that does not match its narinfo: one hash refusal.
	tampered := copyCache(t, caches["none"])
	var hello string
	for _, p := range fx.Closure {
		if strings.HasSuffix(p, "-hello.sh") {
			hello = p
		}
	}
	ni, err := narinfo.ParseBytes(mustRead(t, filepath.Join(tampered, mustPath(t, hello).HashPart()+".narinfo")))
	if err != nil {
		t.Fatal(err)
	}
	nar := mustRead(t, filepath.Join(tampered, ni.URL))
	i := bytes.Index(nar, []byte("single-file path"))
	if i < 0 {
		t.Fatalf("%s: no script text in the NAR", hello)
	}
	nar[i] ^= 1 // same size, different contents
	if err := os.WriteFile(filepath.Join(tampered, ni.URL), nar, 0o644); err != nil {
		t.Fatal(err)
	}
	st2, err := store.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	f2, err := fetch.New(st2, fetch.Options{Substituters: []string{"file://" + tampered}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}})
	if err != nil {
		t.Fatal(err)
	}
	last = fetchapi.Progress{}
	_, err = f2.FetchProgress(ctx, []storepath.Path{mustPath(t, hello)}, func(p fetchapi.Progress) { mu.Lock(); last = p; mu.Unlock() })
	if fetch.ErrorKind(err) != fetchapi.KindHashMismatch {
		t.Fatalf("tampered NAR: %v (kind %q)", err, fetch.ErrorKind(err))
	}
	mu.Lock()
	defer mu.Unlock()
	if last.HashRefusals != 1 || last.CacheBytes["file://"+tampered] == 0 {
		t.Errorf("after a tampered NAR: %+v", last)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
