package fetchapi

import (
	"bytes"
	"testing"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// The kinds are written by one version and read by another (the shim and
// the storepkg binary it runs, the shims and the agent's metric labels).
func TestKindsOnTheWire(t *testing.T) {
	for kind, want := range map[string]string{
		KindNotFound: "not_found", KindUntrusted: "untrusted", KindHashMismatch: "hash_mismatch",
		KindTimeout: "timeout", KindCanceled: "canceled", KindOther: "other",
		KindInvalidArgument: "invalid_argument", KindAborted: "aborted", KindTooLarge: "too_large",
		KindTruncated: "truncated", KindUnavailable: "unavailable", KindNoSpace: "no_space",
	} {
		if kind != want {
			t.Errorf("kind %q, want %q", kind, want)
		}
	}
}

// TestReportLines: the JSON lines of `storepkg fetch --json`, as every
// version of the shim reads them.
func TestReportLines(t *testing.T) {
	var buf bytes.Buffer
	r := NewReporter(&buf)
	r.Progress(Progress{PathsTotal: 3, PathsDone: 1, PathsFetched: 1, BytesTotal: 300, BytesDone: 100,
		CacheBytes: map[string]int64{"http://c": 100}, SignatureRefusals: 2, HashRefusals: 1})
	r.Progress(Progress{BytesDone: 30, CacheBytes: map[string]int64{"http://c": 10, "peer:node-b": 20},
		PeerBytes: 20, UpstreamBytes: 10, HashRefusals: 1, PeerFailures: 2})
	r.Progress(Progress{})
	r.Result(&Result{Closure: []storepath.Path{"7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1"}, Fetched: []storepath.Path{},
		Downloaded: 100, CacheBytes: map[string]int64{"http://c": 100}})
	r.Result(&Result{Closure: []storepath.Path{}, Fetched: []storepath.Path{}, Downloaded: 30,
		CacheBytes: map[string]int64{"peer:node-b": 20, "http://c": 10}, PeerBytes: 20, UpstreamBytes: 10, PeerFailures: 1})
	r.Fail(&Failure{Message: "m", Kind: KindNotFound, Path: "/nix/store/x", Cache: "http://c"})
	r.Fail(&Failure{Message: "m", Kind: KindOther})
	r.Waiting(Waiting{Slots: 2})
	r.NeedsFetch()
	const want = `{"progress":{"pathsTotal":3,"pathsDone":1,"pathsFetched":1,"bytesTotal":300,"bytesDone":100,"cacheBytes":{"http://c":100},"signatureRefusals":2,"hashRefusals":1}}
{"progress":{"pathsTotal":0,"pathsDone":0,"pathsFetched":0,"bytesTotal":0,"bytesDone":30,"cacheBytes":{"http://c":10,"peer:node-b":20},"peerBytes":20,"upstreamBytes":10,"hashRefusals":1,"peerFailures":2}}
{"progress":{"pathsTotal":0,"pathsDone":0,"pathsFetched":0,"bytesTotal":0,"bytesDone":0}}
{"result":{"closure":["7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1"],"fetched":[],"downloaded":100,"cacheBytes":{"http://c":100}}}
{"result":{"closure":[],"fetched":[],"downloaded":30,"cacheBytes":{"http://c":10,"peer:node-b":20},"peerBytes":20,"upstreamBytes":10,"peerFailures":1}}
{"error":{"message":"m","kind":"not_found","path":"/nix/store/x","cache":"http://c"}}
{"error":{"message":"m","kind":"other"}}
{"waiting":{"slots":2}}
{"needsFetch":true}
`
	if got := buf.String(); got != want {
		t.Errorf("reports:\n%s\nwant:\n%s", got, want)
	}
	if err := (&Failure{Message: "m", Kind: KindOther}).Error(); err != "m" {
		t.Errorf("Failure.Error() = %q", err)
	}
}
