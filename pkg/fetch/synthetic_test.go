package fetch_test

import (
	"crypto/ed25519"
	"path/filepath"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestLargeSyntheticClosure: 2,000 paths written by our cache writer;
// real Nix substitutes from that cache too, and the two stores agree.
func TestLargeSyntheticClosure(t *testing.T) {
	nixtest.Require(t, "nix-store")
	start := time.Now()
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "synthetic-1", Key: priv}
	cache := filepath.Join(t.TempDir(), "cache")
	w, err := cachetest.NewWriter(cache, key, true)
	if err != nil {
		t.Fatal(err)
	}
	root, all, err := w.Synthetic("large", 2000)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cache written in %v", time.Since(start))
	ours := t.TempDir()
	start = time.Now()
	res, err := fetchInto(t, ours, fetch.Options{
		Substituters: []string{"file://" + cache},
		TrustedKeys:  []narinfo.PublicKey{key.Public()},
	}, root.Absolute())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Closure) != len(all) || len(res.Fetched) != len(all) {
		t.Fatalf("closure %d, fetched %d, want %d", len(res.Closure), len(res.Fetched), len(all))
	}
	t.Logf("storepkg fetched %d paths in %v", len(res.Fetched), time.Since(start))
	nixtest.Verify(t, ours)

	theirs := t.TempDir()
	start = time.Now()
	nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(theirs), "-r", root.Absolute(),
		"--option", "substituters", "file://"+cache, "--option", "trusted-public-keys", key.Public().String())
	t.Logf("nix-store -r substituted them in %v", time.Since(start))
	want := nixtest.QueryClosure(t, theirs, root.Absolute())
	if got := nixtest.QueryClosure(t, ours, root.Absolute()); !equalStrings(got, want) {
		t.Errorf("closures differ: ours %d paths, Nix's %d", len(got), len(want))
	}
}
