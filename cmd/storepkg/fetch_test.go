package main

import (
	"testing"

	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchexec"
)

// The shim reads the child's failure kinds with fetchexec's names, which
// must stay pkg/fetch's.
func TestFailureKindsAgree(t *testing.T) {
	for _, k := range [][2]string{
		{fetch.KindNotFound, fetchexec.KindNotFound},
		{fetch.KindUntrusted, fetchexec.KindUntrusted},
		{fetch.KindHashMismatch, fetchexec.KindHashMismatch},
		{fetch.KindTimeout, fetchexec.KindTimeout},
		{fetch.KindCanceled, fetchexec.KindCanceled},
		{fetch.KindOther, fetchexec.KindOther},
	} {
		if k[0] != k[1] {
			t.Errorf("pkg/fetch kind %q, fetchexec %q", k[0], k[1])
		}
	}
}
