package fetch

import (
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// zstdDecoders are reused across NARs: a decoder's buffers cost more to
// allocate than a small store path costs to decode.
var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30),
		// The NAR's SHA-256 is checked anyway; zstd's own checksum adds nothing.
		zstd.IgnoreChecksum(true))
	if err != nil {
		panic(err)
	}
	return d
}}

// knownCompression reports whether decompressor handles c.
func knownCompression(c string) bool {
	switch c {
	case "none", "", "xz", "zstd", "bzip2", "br":
		return true
	}
	return false
}

// decompressor returns a reader of the decompressed stream and a release
// function to call once the stream is no longer used.
func decompressor(compression string, r io.Reader) (io.Reader, func(), error) {
	noop := func() {}
	switch compression {
	case "none", "":
		return r, noop, nil
	case "xz":
		if p := xzCommand(); p != "" {
			d, err := execDecoder(p, r, nil)
			if err != nil {
				return nil, noop, err
			}
			return d, d.release, nil
		}
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, noop, fmt.Errorf("xz: %w", err)
		}
		return xr, noop, nil
	case "zstd":
		d := zstdDecoders.Get().(*zstd.Decoder)
		if err := d.Reset(r); err != nil {
			zstdDecoders.Put(d)
			return nil, noop, fmt.Errorf("zstd: %w", err)
		}
		return d, func() { d.Reset(nil); zstdDecoders.Put(d) }, nil
	case "bzip2":
		return bzip2.NewReader(r), noop, nil
	case "br":
		return brotli.NewReader(r), noop, nil
	default:
		return nil, noop, fmt.Errorf("unknown compression %q", compression)
	}
}

// xzCommand is the host's xz(1), used for xz NARs when present: liblzma
// decodes about 1.6x faster than the best pure-Go decoder we measured
// (docs/benchmarks.md), and calling the program keeps our binaries
// static. STOREPKG_XZ=go forces the pure-Go decoder.
var xzCommand = lookupXZ

var lookupXZ = sync.OnceValue(func() string {
	if os.Getenv("STOREPKG_XZ") == "go" {
		return ""
	}
	p, err := exec.LookPath("xz")
	if err != nil {
		return ""
	}
	return p
})

// execDecoder streams r through `xz -dc`. The output is as untrusted as
// the input: the caller still cuts it at NarSize and checks its hash.
//
// When the compressed file is local (in, a regular file, from a file://
// cache), xz reads it itself: no copy through a pipe and no goroutine
// feeding one. r is then nil, and in's offset (shared with xz) tells how
// far xz has read.
func execDecoder(path string, r io.Reader, in *os.File) (*cmdReader, error) {
	cmd := exec.Command(path, "-dc", "-T1")
	if in != nil {
		cmd.Stdin = in
	} else {
		cmd.Stdin = r
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// xz's output pipe is ours, not os/exec's: a blocking one that the
	// runtime's poller never sees. A pipe watched by epoll wakes its
	// reader on every write, and xz writes 8 KiB at a time.
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	out := os.NewFile(uintptr(fds[0]), "|xz")
	w := os.NewFile(uintptr(fds[1]), "|xz")
	// A larger pipe lets xz run on while we hash and write; at most
	// /proc/sys/fs/pipe-max-size, else the default 64 KiB stays.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, xzPipeSize)
	size, err := unix.FcntlInt(uintptr(fds[1]), unix.F_GETPIPE_SZ, 0)
	if err != nil || size <= 0 {
		size = 64 << 10
	}
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("xz: %w", err)
	}
	return &cmdReader{cmd: cmd, out: out, stderr: &stderr, batch: min(size/2, xzBatch), last: time.Now()}, nil
}

const (
	xzPipeSize = 1 << 20
	xzBatch    = 256 << 10
)

// cmdReader reads xz's output in batches: after a read that found less
// than a batch in the pipe, it sleeps for about the time xz needs to
// write the rest of one, at the rate it wrote the last. Reading whatever
// is there instead would cost a wake-up, a context switch and a read per
// 8 KiB write, on both sides.
type cmdReader struct {
	cmd    *exec.Cmd
	out    *os.File
	stderr *bytes.Buffer
	waited bool

	batch int
	last  time.Time     // when the last read returned
	pause time.Duration // before the next read

	onRead func() // if set, called after each read
}

const (
	minPause = 200 * time.Microsecond
	maxPause = 5 * time.Millisecond
)

func (c *cmdReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.pause > 0 {
		time.Sleep(c.pause)
	}
	n, err := c.out.Read(p)
	now := time.Now()
	c.pause = 0
	if want := min(len(p), c.batch); err == nil && n > 0 && n < want {
		c.pause = min(max(now.Sub(c.last)*time.Duration(want-n)/time.Duration(n), minPause), maxPause)
	}
	c.last = now
	if c.onRead != nil {
		c.onRead()
	}
	if err == io.EOF && !c.waited {
		// The end of the output is only good if xz says so.
		c.waited = true
		c.out.Close()
		if werr := c.cmd.Wait(); werr != nil {
			return n, fmt.Errorf("xz: %v: %s", werr, bytes.TrimSpace(c.stderr.Bytes()))
		}
	}
	return n, err
}

func (c *cmdReader) release() {
	if !c.waited {
		c.waited = true
		c.cmd.Process.Kill()
		c.out.Close()
		c.cmd.Wait()
	}
}
