package fetch_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestFileCacheConfined: a file:// cache's narinfo URL, which no
// signature covers, names the NAR to read. A man in the middle (or a
// cache's writer) points it outside the cache directory, at a FIFO or at
// a device; each fetch is refused, promptly, with an error naming the
// cache, the narinfo and what was wrong, and nothing enters the store.
func TestFileCacheConfined(t *testing.T) {
	fx, key, caches := fixture(t)
	app := fx.Root
	narinfoName := mustPath(t, app).HashPart() + ".narinfo"
	// The URL is edited without re-signing: the signature still verifies.
	setURL := func(t *testing.T, cache, url string) {
		editNarinfo(t, cache, app, nil, func(ni *narinfo.NarInfo) { ni.URL = url })
	}
	mknod := func(t *testing.T, file string, mode uint32, dev int) {
		t.Helper()
		if err := syscall.Mknod(file, mode|0o644, dev); err != nil {
			t.Fatalf("mknod %s: %v", file, err)
		}
	}

	cases := []struct {
		name   string
		tamper func(t *testing.T, cache string)
		want   string
	}{
		{name: "dotdot", want: `"../../etc/hostname" is not a file inside the cache directory`,
			tamper: func(t *testing.T, c string) { setURL(t, c, "../../etc/hostname") }},
		{name: "dotdot inside", want: `"nar/../../etc/hostname" is not a file inside the cache directory`,
			tamper: func(t *testing.T, c string) { setURL(t, c, "nar/../../etc/hostname") }},
		{name: "absolute", want: `"/etc/hostname" is an absolute path`,
			tamper: func(t *testing.T, c string) { setURL(t, c, "/etc/hostname") }},
		{name: "absolute symlink", want: `"nar/host.nar" is not a file inside the cache directory`,
			tamper: func(t *testing.T, c string) {
				if err := os.Symlink("/etc/hostname", filepath.Join(c, "nar", "host.nar")); err != nil {
					t.Fatal(err)
				}
				setURL(t, c, "nar/host.nar")
			}},
		{name: "relative symlink", want: `"nar/host.nar" is not a file inside the cache directory`,
			tamper: func(t *testing.T, c string) {
				up := strings.Repeat("../", strings.Count(c, "/")+1) + "etc/hostname"
				if err := os.Symlink(up, filepath.Join(c, "nar", "host.nar")); err != nil {
					t.Fatal(err)
				}
				setURL(t, c, "nar/host.nar")
			}},
		{name: "FIFO", want: `"nar/fifo.nar" in the cache directory ` + "%CACHE%" + ` is a FIFO, not a regular file`,
			tamper: func(t *testing.T, c string) {
				if err := syscall.Mkfifo(filepath.Join(c, "nar", "fifo.nar"), 0o644); err != nil {
					t.Fatal(err)
				}
				setURL(t, c, "nar/fifo.nar")
			}},
		{name: "device", want: `"nar/zero.nar" in the cache directory ` + "%CACHE%" + ` is a device, not a regular file`,
			tamper: func(t *testing.T, c string) {
				file := filepath.Join(c, "nar", "zero.nar")
				// /dev/zero's numbers (1, 5) need CAP_MKNOD; the whiteout
				// device (0, 0) anyone may make is a device all the same.
				if err := syscall.Mknod(file, syscall.S_IFCHR|0o644, 1<<8|5); err != nil {
					mknod(t, file, syscall.S_IFCHR, 0)
				}
				setURL(t, c, "nar/zero.nar")
			}},
		{name: "symlink to a FIFO", want: `"nar/link.nar" in the cache directory ` + "%CACHE%" + ` is a FIFO`,
			tamper: func(t *testing.T, c string) {
				if err := syscall.Mkfifo(filepath.Join(c, "nar", "fifo.nar"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("fifo.nar", filepath.Join(c, "nar", "link.nar")); err != nil {
					t.Fatal(err)
				}
				setURL(t, c, "nar/link.nar")
			}},
		{name: "directory", want: `"nar" in the cache directory ` + "%CACHE%" + ` is a directory`,
			tamper: func(t *testing.T, c string) { setURL(t, c, "nar") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cache := copyCache(t, caches["none"])
			tc.tamper(t, cache)
			root := t.TempDir()
			err := fetchWithin(t, root, 30*time.Second, cacheOptions(t, "file://"+cache, key), app)
			if err == nil {
				t.Fatal("fetch succeeded")
			}
			t.Logf("error: %v", err)
			want := strings.ReplaceAll(tc.want, "%CACHE%", cache)
			for _, s := range []string{want, app, narinfoName, "(cache file://" + cache + ")"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\ndoes not say %q", err, s)
				}
			}
			var pe *fetch.PathError
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *fetch.PathError", err)
			}
			if got := fetch.ErrorKind(err); got != fetchapi.KindOther {
				t.Errorf("ErrorKind = %q, want %q", got, fetchapi.KindOther)
			}
			assertUntouched(t, root, app)
		})
	}

	// A link, or a "..", that stays inside the cache is followed: the
	// confinement refuses escapes, not links.
	t.Run("symlink inside", func(t *testing.T) {
		cache := copyCache(t, caches["none"])
		ni, err := narinfo.ParseBytes(mustRead(t, filepath.Join(cache, narinfoName)))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(ni.URL, filepath.Join(cache, "alias.nar")); err != nil {
			t.Fatal(err)
		}
		setURL(t, cache, "nar/../alias.nar")
		mustFetchVerified(t, "file://"+cache, key, app)
	})
}

// mustFetchVerified fetches paths from the cache at url, trusting key,
// into a fresh store, and has Nix verify the store.
func mustFetchVerified(t *testing.T, url string, key nixtest.Key, paths ...string) {
	t.Helper()
	root := t.TempDir()
	if err := fetchWithin(t, root, 2*time.Minute, cacheOptions(t, url, key), paths...); err != nil {
		t.Fatal(err)
	}
	nixtest.Verify(t, root)
}

// cacheOptions fetches from the one cache at url, trusting key.
func cacheOptions(t *testing.T, url string, key nixtest.Key) fetch.Options {
	return fetch.Options{Substituters: []string{url}, TrustedKeys: []narinfo.PublicKey{publicKey(t, key)}}
}

// fetchWithin fetches paths into a fresh store under storeRoot and fails
// the test if the fetch has not returned within d: a read that blocks
// (a FIFO without a writer) must not hang a fetch.
func fetchWithin(t *testing.T, storeRoot string, d time.Duration, opts fetch.Options, paths ...string) error {
	t.Helper()
	st, err := store.Open(context.Background(), storeRoot)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.New(st, opts)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	var ps []storepath.Path
	for _, p := range paths {
		ps = append(ps, mustPath(t, p))
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.Fetch(context.Background(), ps)
		done <- err
	}()
	select {
	case err := <-done:
		st.Close()
		return err
	case <-time.After(d):
		t.Fatalf("fetch still running after %v", d)
		return nil
	}
}
