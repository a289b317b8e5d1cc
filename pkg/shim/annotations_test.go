package shim

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const (
	hello = "/nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1"
	tools = "/nix/store/gp09mdbnl45h21nk6djg2bs72pqvkr09-tools"
)

func TestParseAnnotations(t *testing.T) {
	pp, err := parseAnnotations(map[string]string{
		AnnotationPaths:                    hello + ", " + tools + "\n" + hello,
		AnnotationPathsFor + "sidecar":     tools,
		"io.kubernetes.cri.container-type": "container",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := pp.forContainer("app"); len(got) != 2 || got[0].Absolute() != hello || got[1].Absolute() != tools {
		t.Errorf("app: %v", got)
	}
	if got := pp.forContainer("sidecar"); len(got) != 1 || got[0].Absolute() != tools {
		t.Errorf("sidecar: %v", got)
	}
	if n := len(pp.lists()); n != 2 {
		t.Errorf("%d lists to prefetch", n)
	}
	none, err := parseAnnotations(map[string]string{"other": "x"})
	if err != nil || none.forContainer("app") != nil {
		t.Errorf("pod without paths: %v, %v", none, err)
	}
}

func TestParseAnnotationsRejects(t *testing.T) {
	for name, c := range map[string]struct {
		annotations map[string]string
		want        string
	}{
		"not a store path": {map[string]string{AnnotationPaths: "/usr/bin/env"}, "not in /nix/store"},
		"dotdot":           {map[string]string{AnnotationPaths: "/nix/store/../../etc/passwd"}, "names a file inside"},
		"bad hash chars":   {map[string]string{AnnotationPaths: "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"}, "bad hash character"},
		"file inside":      {map[string]string{AnnotationPaths: hello + "/bin/hello"}, "names a file inside"},
		"empty":            {map[string]string{AnnotationPaths: " , "}, "no store paths"},
		"unknown key":      {map[string]string{"storepkg.dev/path": hello}, "unknown storepkg annotation"},
		"empty container":  {map[string]string{AnnotationPathsFor: hello}, "unknown storepkg annotation"},
	} {
		_, err := parseAnnotations(c.annotations)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument mentioning %q", name, err, c.want)
		}
		for k := range c.annotations {
			if err != nil && !strings.Contains(err.Error(), k) {
				t.Errorf("%s: error %q does not name the annotation %s", name, err, k)
			}
		}
	}
}
