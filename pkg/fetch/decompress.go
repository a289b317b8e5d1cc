package fetch

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
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

// The memory a decoder may take is bounded, because what picks it is not
// signed: the narinfo's Compression field (anyone who can change a
// narinfo in transit chooses the decoder) and the compressed file's own
// headers (zstd's window, xz's dictionary), which the signed NarHash only
// checks after decoding. Without a bound, a frame header asking for a
// 2 GiB window makes the fetch child allocate 2 GiB.
//
//   - zstd: a window (and, for a single-segment frame, a content size) of
//     at most maxWindow, 128 MiB: zstd's largest level (22, --ultra) uses
//     128 MiB, its default level 2 MiB; only --long=28 and above exceed
//     it, which Nix never uses. A larger one is refused before anything
//     is allocated.
//   - xz: xz(1) runs with --memlimit-decompress=xzMemLimit: a dictionary
//     of up to maxWindow, twice what xz -9 (Nix's largest preset, the
//     one cache.nixos.org uses) takes, plus 8 MiB for liblzma's own
//     state. A larger dictionary makes xz exit with "Memory usage limit
//     reached" before it allocates it. The pure-Go decoder, used where
//     xz(1) is missing, gets the same bound on the dictionary of the
//     stream's first block (see checkXZDict); it has none of its own.
//   - bzip2: the format bounds it: blocks of at most 900 kB, about 4 MiB
//     of decoder state (compress/bzip2).
//   - br: the format bounds it: windows of at most 16 MiB (lgwin 24); the
//     large-window extension, which allows 1 GiB, is off in
//     andybalholm/brotli's NewReader.
const (
	maxWindow  = 128 << 20
	xzMemLimit = maxWindow + 8<<20
)

// zstdDecoders are reused across NARs: a decoder's buffers cost more to
// allocate than a small store path costs to decode.
var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderMaxMemory(maxWindow),
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
		br := bufio.NewReader(r)
		if err := checkXZDict(br); err != nil {
			return nil, noop, err
		}
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, noop, fmt.Errorf("xz: %w", err)
		}
		return xr, noop, nil
	case "zstd":
		d := zstdDecoders.Get().(*zstd.Decoder)
		if err := d.Reset(r); err != nil {
			zstdDecoders.Put(d)
			return nil, noop, zstdError(err)
		}
		return zstdReader{d}, func() { d.Reset(nil); zstdDecoders.Put(d) }, nil
	case "bzip2":
		return bzip2.NewReader(r), noop, nil
	case "br":
		return brotli.NewReader(r), noop, nil
	default:
		return nil, noop, fmt.Errorf("unknown compression %q", compression)
	}
}

// zstdReader says why the decoder refuses a frame that needs more memory
// than maxWindow.
type zstdReader struct{ d *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.d.Read(p)
	if err != nil && err != io.EOF {
		err = zstdError(err)
	}
	return n, err
}

func zstdError(err error) error {
	if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return fmt.Errorf("zstd: %w: the stream needs a window larger than the %d MiB storepkg decodes with", err, maxWindow>>20)
	}
	return fmt.Errorf("zstd: %w", err)
}

// checkXZDict refuses an xz stream whose first block's LZMA2 dictionary
// is larger than maxWindow, for the pure-Go decoder, which allocates
// whatever dictionary a block header asks for (up to 4 GiB). Only the
// first block is checked: later block headers are known only once the
// blocks before them are decoded. Streams Nix writes have one block
// (single-threaded xz) or blocks with the same filters (xz -T).
func checkXZDict(br *bufio.Reader) error {
	const streamHeader = 12
	head, err := br.Peek(streamHeader + 1)
	if err != nil || !bytes.HasPrefix(head, []byte("\xfd7zXZ\x00")) {
		return nil // not an xz stream with a block: the decoder says what is wrong
	}
	size := (int(head[streamHeader]) + 1) * 4
	if head[streamHeader] == 0 {
		return nil // no block, the index follows
	}
	hdr, err := br.Peek(streamHeader + size)
	if err != nil {
		return nil
	}
	hdr = hdr[streamHeader+1 : streamHeader+size-4] // after the size byte, before the CRC32
	if len(hdr) < 1 {
		return nil
	}
	flags := hdr[0]
	hdr = hdr[1:]
	varint := func() (uint64, bool) {
		var v uint64
		for i := 0; i < 9 && len(hdr) > 0; i++ {
			b := hdr[0]
			hdr = hdr[1:]
			v |= uint64(b&0x7f) << (7 * i)
			if b&0x80 == 0 {
				return v, true
			}
		}
		return 0, false
	}
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} { // compressed, uncompressed size
		if present {
			if _, ok := varint(); !ok {
				return nil
			}
		}
	}
	for range int(flags&3) + 1 {
		id, ok1 := varint()
		n, ok2 := varint()
		if !ok1 || !ok2 || uint64(len(hdr)) < n {
			return nil
		}
		props := hdr[:n]
		hdr = hdr[n:]
		if id != 0x21 || n != 1 { // not LZMA2
			continue
		}
		bits := uint64(props[0] & 0x3f)
		dict := uint64(1<<32 - 1)
		if bits < 40 {
			dict = (2 | bits&1) << (bits/2 + 11)
		}
		if dict > maxWindow {
			return fmt.Errorf("xz: the stream's LZMA2 dictionary is %d MiB, larger than the %d MiB storepkg decodes with", dict>>20, maxWindow>>20)
		}
	}
	return nil
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
	cmd := exec.Command(path, "-dc", "-T1", fmt.Sprintf("--memlimit-decompress=%dMiB", xzMemLimit>>20))
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
