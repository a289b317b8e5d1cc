package shim

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// TestNoRootsWithoutOwnerRecord: when the shim cannot write the owner
// record of a pod's GC roots, no fetch child starts (it would make roots
// no collector ever sweeps): the sandbox's prefetch and the container's
// create fail with a clear error, and the next create, once the record
// can be written, writes it and fetches.
func TestNoRootsWithoutOwnerRecord(t *testing.T) {
	root := t.TempDir()
	owners := filepath.Join(root, "nix", "var", "storepkg", "owners")
	if err := os.MkdirAll(filepath.Dir(owners), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(owners, nil, 0o644); err != nil { // a file where the directory goes
		t.Fatal(err)
	}
	c := newCore()
	c.cfg, c.fetchBin = &Config{StoreRoot: root, StatusDir: "-", FetchSlotsDir: t.TempDir()}, "/nonexistent/storepkg"
	started := 0
	c.startChild = func(*exec.Cmd) (func() error, error) {
		started++
		return nil, errors.New("no fetch child in this test")
	}
	c.pod.sandboxID = "sandbox-1"
	paths := []storepath.Path{"7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1"}
	ctx := context.Background()

	err := c.prefetch(ctx, c.cfg, "sandbox-1", &podPaths{all: paths})
	if err == nil || !strings.Contains(err.Error(), "cannot record this shim as the holder of the pod's GC roots") {
		t.Errorf("prefetch: %v", err)
	}
	bundle := t.TempDir()
	err = c.prepareContainer(ctx, c.cfg, "container-1", bundle, &specs.Spec{}, paths, nil)
	if err == nil || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), owners) {
		t.Errorf("container create: %v; want ErrUnavailable naming %s", err, owners)
	}
	t.Logf("container create: %v", err)
	if started != 0 || len(c.fetches) != 0 || len(c.roots) != 0 {
		t.Errorf("without an owner record: %d children started, fetches %v, roots %v", started, c.fetches, c.roots)
	}

	// Once the record can be written, the next create writes it first.
	if err := os.Remove(owners); err != nil {
		t.Fatal(err)
	}
	err = c.prepareContainer(ctx, c.cfg, "container-1", bundle, &specs.Spec{}, paths, nil)
	if err == nil || !strings.Contains(err.Error(), "no fetch child in this test") {
		t.Errorf("container create: %v, want the fetch child's failure", err)
	}
	if started != 1 {
		t.Errorf("%d fetch children started, want 1", started)
	}
	if _, err := os.Stat(filepath.Join(owners, "sandbox-1.json")); err != nil {
		t.Errorf("owner record: %v", err)
	}
	if names, ok := c.roots["sandbox-1"]; !ok || len(names) != 1 || names[0] != gcowner.RootName("sandbox-1", paths[0]) {
		t.Errorf("roots %v", c.roots)
	}
}

// TestFetchErrorTooLarge: a closure over the node's limits reaches CRI as
// ResourceExhausted, naming the runtime options.
func TestFetchErrorTooLarge(t *testing.T) {
	err := fetchError(&fetchapi.Failure{Kind: fetchapi.KindTooLarge, Message: "the closure of /nix/store/x needs at least 5 bytes"})
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "the closure of /nix/store/x needs at least 5 bytes") ||
		!strings.Contains(err.Error(), "MaxClosureNarBytes") {
		t.Errorf("too large: %v", err)
	}
	if err := fetchError(&fetchapi.Failure{Kind: fetchapi.KindNotFound, Message: "m"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("not found: %v", err)
	}
}

// TestFetchErrorKinds: every failure kind of the fetch child reaches CRI
// as the errdefs kind that says what happened (through errgrpc, the code
// containerd's CRI returns), with the child's message.
func TestFetchErrorKinds(t *testing.T) {
	for kind, c := range map[string]struct {
		want error
		code codes.Code
		says string
	}{
		fetchapi.KindNotFound:        {errdefs.ErrNotFound, codes.NotFound, ""},
		fetchapi.KindUntrusted:       {errdefs.ErrFailedPrecondition, codes.FailedPrecondition, ""},
		fetchapi.KindHashMismatch:    {errdefs.ErrDataLoss, codes.DataLoss, ""},
		fetchapi.KindTruncated:       {errdefs.ErrDataLoss, codes.DataLoss, ""},
		fetchapi.KindTimeout:         {errdefs.ErrUnavailable, codes.Unavailable, ""},
		fetchapi.KindUnavailable:     {errdefs.ErrUnavailable, codes.Unavailable, ""},
		fetchapi.KindInvalidArgument: {errdefs.ErrInvalidArgument, codes.InvalidArgument, ""},
		fetchapi.KindNoSpace:         {errdefs.ErrResourceExhausted, codes.ResourceExhausted, "filesystem is full"},
		fetchapi.KindTooLarge:        {errdefs.ErrResourceExhausted, codes.ResourceExhausted, "MaxClosureNarBytes"},
		fetchapi.KindCanceled:        {errdefs.ErrUnknown, codes.Unknown, ""},
		fetchapi.KindAborted:         {errdefs.ErrUnknown, codes.Unknown, ""},
		fetchapi.KindOther:           {errdefs.ErrUnknown, codes.Unknown, ""},
		"from_a_newer_child":         {errdefs.ErrUnknown, codes.Unknown, ""},
	} {
		msg := "/nix/store/x: failed as " + kind
		err := fetchError(&fetchapi.Failure{Kind: kind, Message: msg})
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want %v saying %q", kind, err, c.want, c.says)
		}
		if got := status.Code(errgrpc.ToGRPC(err)); got != c.code {
			t.Errorf("%s: gRPC code %v, want %v", kind, got, c.code)
		}
	}
}
