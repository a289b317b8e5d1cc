package fetch

import (
	"compress/bzip2"
	"fmt"
	"io"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// zstdDecoders are reused across NARs: a decoder's buffers cost more to
// allocate than a small store path costs to decode.
var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
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
