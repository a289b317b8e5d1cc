package fetch

import (
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
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
			return execDecoder(p, r)
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
func execDecoder(path string, r io.Reader) (io.Reader, func(), error) {
	cmd := exec.Command(path, "-dc", "-T1")
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, func() {}, fmt.Errorf("xz: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, func() {}, fmt.Errorf("xz: %w", err)
	}
	d := &cmdReader{cmd: cmd, out: out, stderr: &stderr}
	return d, d.release, nil
}

type cmdReader struct {
	cmd    *exec.Cmd
	out    io.ReadCloser
	stderr *bytes.Buffer
	waited bool
}

func (c *cmdReader) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if err == io.EOF && !c.waited {
		// The end of the output is only good if xz says so.
		c.waited = true
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
