package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// The shim reads the child's failure kinds with fetchapi's names: --json
// reports pkg/fetch's classification of each error, with the path and
// cache at fault.
func TestFetchFailureKinds(t *testing.T) {
	p := storepath.Path("7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	for _, c := range []struct {
		err  error
		kind string
	}{
		{fetch.ErrNotFound, fetchapi.KindNotFound},
		{fetch.ErrUntrusted, fetchapi.KindUntrusted},
		{fetch.ErrHashMismatch, fetchapi.KindHashMismatch},
		{context.DeadlineExceeded, fetchapi.KindTimeout},
		{context.Canceled, fetchapi.KindCanceled},
		{fetch.ErrTruncated, fetchapi.KindTruncated},
		{fetch.ErrUnavailable, fetchapi.KindUnavailable},
		{fmt.Errorf("unpack: %w", &os.PathError{Op: "write", Path: "/nix/store/x", Err: syscall.ENOSPC}), fetchapi.KindNoSpace},
		{fmt.Errorf("unpack: %w", &os.PathError{Op: "write", Path: "/nix/store/x", Err: syscall.EDQUOT}), fetchapi.KindNoSpace},
		{errors.New("something else"), fetchapi.KindOther},
	} {
		err := fmt.Errorf("substituting: %w", &fetch.PathError{Path: p, Cache: "http://c", Err: c.err})
		f := fetchFailure(err)
		if f.Kind != c.kind || f.Path != p.Absolute() || f.Cache != "http://c" || f.Message != err.Error() {
			t.Errorf("%v: reported %+v, want kind %q", c.err, f, c.kind)
		}
	}
}
