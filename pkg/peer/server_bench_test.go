package peer_test

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/nar"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// benchContent is what the served path holds: the Go toolchain's
// programs (ELF executables, like most of a closure's bytes) and part of
// its sources (text); STOREPKG_BENCH_TREE overrides it.
var benchContent = []string{"/usr/local/go/pkg/tool", "/usr/local/go/src/net"}

// BenchmarkServeNar measures what a peer's client sees of one NAR, plain
// or compressed on the fly, over loopback and over links throttled to
// 1 Gbit/s and 200 Mbit/s (the server's writes paced): wall time, and the
// process's CPU time (server and client, which decompresses and hashes
// as the fetch does). `go test -run X -bench ServeNar -benchtime 3x`.
func BenchmarkServeNar(b *testing.B) {
	root := b.TempDir()
	st, err := store.Open(context.Background(), root)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	p, err := storepath.ParseBase("0123456789abcdfghijklmnpqrsvwxyz-bench-tree")
	if err != nil {
		b.Fatal(err)
	}
	dir := st.RealPath(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	content := benchContent
	if v := os.Getenv("STOREPKG_BENCH_TREE"); v != "" {
		content = strings.Fields(v)
	}
	for _, src := range content {
		if out, err := exec.Command("cp", "-a", src, dir+"/").CombinedOutput(); err != nil {
			b.Fatalf("cp %s: %v %s", src, err, out)
		}
	}
	h := sha256.New()
	size, err := nar.WriteTree(context.Background(), h, dir)
	if err != nil {
		b.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if err := st.Register(context.Background(), []store.PathInfo{{Path: p, NarHash: sum, NarSize: uint64(size), Sigs: []string{"bench-1:AAAA"}}}); err != nil {
		b.Fatal(err)
	}
	// The compression ratio, once.
	var zsize countWriter
	enc, _ := zstd.NewWriter(&zsize, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	nar.WriteTree(context.Background(), enc, dir)
	enc.Close()
	b.Logf("NAR of %.1f MB, %.1f MB with zstd (fastest): ratio %.2f", float64(size)/1e6, float64(zsize)/1e6, float64(size)/float64(zsize))

	log := logrus.New()
	log.SetOutput(io.Discard)
	for _, link := range []struct {
		name string
		bps  float64 // bytes per second, 0: unthrottled
	}{{"loopback", 0}, {"1Gbit", 125e6}, {"200Mbit", 25e6}} {
		for _, comp := range []string{peer.CompressionNone, peer.CompressionZstd} {
			b.Run(link.name+"/"+comp, func(b *testing.B) {
				srv, err := peer.NewServer(peer.ServerConfig{Store: st, Token: token, Compression: comp, Log: logrus.NewEntry(log)})
				if err != nil {
					b.Fatal(err)
				}
				hs := httptest.NewUnstartedServer(srv.Handler())
				if link.bps > 0 {
					hs.Listener = &pacedListener{Listener: hs.Listener, bps: link.bps}
				}
				hs.Start()
				defer hs.Close()
				req, _ := http.NewRequest("GET", hs.URL+"/"+p.HashPart()+".narinfo", nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				ni, err := narinfo.ParseBytes(body)
				if err != nil {
					b.Fatal(err)
				}
				cpu0 := cpuTime()
				b.ResetTimer()
				for range b.N {
					fetchNar(b, hs.URL+"/"+ni.URL, comp, ni)
				}
				b.StopTimer()
				b.ReportMetric(float64(size)/1e6/(b.Elapsed().Seconds()/float64(b.N)), "NAR-MB/s")
				b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
			})
		}
	}
}

func fetchNar(b *testing.B, url, comp string, ni *narinfo.NarInfo) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var r io.Reader = resp.Body
	if comp == peer.CompressionZstd {
		dec, err := zstd.NewReader(resp.Body)
		if err != nil {
			b.Fatal(err)
		}
		defer dec.Close()
		r = dec
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		b.Fatal(err)
	}
	if uint64(n) != ni.NarSize || narinfo.Hash(h.Sum(nil)) != ni.NarHash {
		b.Fatalf("NAR does not match")
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pacedListener's connections write at most bps bytes a second: a
// slower link than loopback, on loopback.
type pacedListener struct {
	net.Listener
	bps float64
}

func (l *pacedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &pacedConn{Conn: c, bps: l.bps, start: time.Now()}, nil
}

type pacedConn struct {
	net.Conn
	bps   float64
	start time.Time
	sent  float64
	last  time.Time
}

func (c *pacedConn) Write(p []byte) (int, error) {
	if time.Since(c.last) > 50*time.Millisecond {
		// Idle time between requests earns no burst.
		c.start, c.sent = time.Now(), 0
	}
	defer func() { c.last = time.Now() }()
	total := 0
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		n, err := c.Conn.Write(p[:k])
		total += n
		c.sent += float64(n)
		if err != nil {
			return total, err
		}
		p = p[k:]
		if ahead := time.Duration(c.sent/c.bps*float64(time.Second)) - time.Since(c.start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	return total, nil
}
