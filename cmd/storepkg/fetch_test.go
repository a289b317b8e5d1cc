package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
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

// TestFetchCacheConfigErrors: --cache-config replaces the cache flags
// (both given is an error naming them), and a bad file is refused
// naming the flag and the field.
func TestFetchCacheConfigErrors(t *testing.T) {
	p := "/nix/store/7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1"
	for _, c := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"--cache-config", "-", "--substituter", "http://127.0.0.1:1"}, `{}`, "--cache-config replaces --substituter"},
		{[]string{"--cache-config", "-"}, `{"substituter": ["http://127.0.0.1:1"]}`, `--cache-config -: json: unknown field "substituter"`},
		{[]string{"--cache-config", "/nonexistent/caches.json"}, ``, "--cache-config /nonexistent/caches.json: open /nonexistent/caches.json"},
		{[]string{"--slot-fd", "3", "--fetch-slots", "/tmp/x"}, ``, "--slot-fd and --fetch-slots"},
		{[]string{"--fetch-slots", "/tmp/x"}, ``, "--fetch-slots needs --max-concurrent-fetches"},
	} {
		cmd := newRootCommand()
		cmd.SetIn(strings.NewReader(c.stdin))
		cmd.SetArgs(append(append([]string{"fetch", "--root", t.TempDir()}, c.args...), p))
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}
