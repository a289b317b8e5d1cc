package fetch_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestDecoderMemoryBound: the narinfo's Compression, URL and FileSize are
// not signed, so a man in the middle can serve a path's genuine NAR
// recompressed with a huge window (zstd --long=31: 2 GiB; xz with a
// 1.5 GiB dictionary). The decoder would allocate the window before the
// NAR's hash could refuse anything; the fetch refuses the stream instead,
// saying why, and allocates no such window.
func TestDecoderMemoryBound(t *testing.T) {
	testenv.LookPath(t, "zstd", "xz")
	fx, key, caches := fixture(t)
	app := fx.Root
	narinfoFile := mustPath(t, app).HashPart() + ".narinfo"
	ni, err := narinfo.ParseBytes(mustRead(t, filepath.Join(caches["none"], narinfoFile)))
	if err != nil {
		t.Fatal(err)
	}
	nar := mustRead(t, filepath.Join(caches["none"], ni.URL))

	// compress runs a compressor on the NAR read from standard input, so
	// that the compressor cannot shrink the window to the input's size.
	compress := func(t *testing.T, name string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Stdin = bytes.NewReader(nar)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
		}
		return out.Bytes()
	}
	zstdLong := func(log int) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			b := compress(t, "zstd", "-q", "-c", "--long="+strconv.Itoa(log), "-")
			// The frame header names the window: magic, descriptor,
			// window descriptor (exponent in the high 5 bits) unless
			// single-segment.
			if len(b) < 6 || b[4]&0x20 != 0 || 10+int(b[5]>>3) != log {
				t.Fatalf("zstd --long=%d wrote a frame without a 2^%d window: % x", log, log, b[:min(len(b), 8)])
			}
			return b
		}
	}
	xzDict := func(t *testing.T) []byte {
		// preset 0 (hash chains) keeps the compressor's own tables small.
		return compress(t, "xz", "-q", "-c", "--format=xz", "--lzma2=preset=0,dict=1536MiB", "-")
	}

	cases := []struct {
		name        string
		compression string
		make        func(t *testing.T) []byte
		http        bool // serve over HTTP (xz reads a pipe), else file:// (xz reads the file)
		pureGo      bool // the pure-Go xz decoder
		want        string
	}{
		{name: "zstd long=31", compression: "zstd", make: zstdLong(31),
			want: "window larger than the 128 MiB storepkg decodes with"},
		{name: "zstd long=30", compression: "zstd", make: zstdLong(30),
			want: "window larger than the 128 MiB storepkg decodes with"},
		{name: "xz 1.5 GiB dictionary, local file", compression: "xz", make: xzDict,
			want: "Memory usage limit reached"},
		{name: "xz 1.5 GiB dictionary, over HTTP", compression: "xz", make: xzDict, http: true,
			want: "Memory usage limit reached"},
		{name: "xz 1.5 GiB dictionary, pure Go", compression: "xz", make: xzDict, pureGo: true,
			want: "LZMA2 dictionary is 1536 MiB, larger than the 128 MiB storepkg decodes with"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.pureGo {
				fetch.SetPureGoXZ(true)
				defer fetch.SetPureGoXZ(false)
			}
			cache := copyCache(t, caches["none"])
			rel := "nar/huge-window.nar." + tc.compression
			file := tc.make(t)
			if err := os.WriteFile(filepath.Join(cache, rel), file, 0o644); err != nil {
				t.Fatal(err)
			}
			// Unsigned fields only: the signature still verifies.
			editNarinfo(t, cache, app, nil, func(ni *narinfo.NarInfo) {
				ni.URL, ni.Compression, ni.FileHash, ni.FileSize = rel, tc.compression, nil, uint64(len(file))
			})
			url := "file://" + cache
			if tc.http {
				url = nixtest.Serve(t, cache, nil)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			root := t.TempDir()
			err := fetchWithin(t, root, time.Minute, cacheOptions(t, url, key), app)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("fetch succeeded")
			}
			t.Logf("error: %v", err)
			for _, s := range []string{tc.want, app, rel} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\ndoes not say %q", err, s)
				}
			}
			// This process allocated no window: far less than 128 MiB in all.
			if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
				t.Errorf("the fetch allocated %d MiB", got>>20)
			}
			assertUntouched(t, root, app)
		})
	}

	// The bound is no stricter than Nix's own compressors: xz -9 (what
	// cache.nixos.org uses) and zstd --ultra -22 (the largest window
	// without --long) decode.
	for _, c := range []struct {
		compression, name string
		args              []string
	}{
		{"xz", "xz", []string{"-q", "-c", "-9", "-"}},
		{"zstd", "zstd", []string{"-q", "-c", "--ultra", "-22", "-"}},
	} {
		t.Run(c.compression+" largest preset", func(t *testing.T) {
			cache := copyCache(t, caches["none"])
			rel := "nar/largest." + c.compression
			file := compress(t, c.name, c.args...)
			if err := os.WriteFile(filepath.Join(cache, rel), file, 0o644); err != nil {
				t.Fatal(err)
			}
			editNarinfo(t, cache, app, nil, func(ni *narinfo.NarInfo) {
				ni.URL, ni.Compression, ni.FileHash, ni.FileSize = rel, c.compression, nil, uint64(len(file))
			})
			mustFetchVerified(t, "file://"+cache, key, app)
		})
	}
}
