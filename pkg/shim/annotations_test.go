package shim

import (
	"errors"
	"fmt"
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
	}, annotationLimits{})
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
	none, err := parseAnnotations(map[string]string{"other": "x"}, annotationLimits{})
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
		_, err := parseAnnotations(c.annotations, annotationLimits{})
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

// TestParseAnnotationsLimits: a pod over the node's limits is refused
// with an InvalidArgument error naming an annotation and the option;
// at the limits it is accepted.
func TestParseAnnotationsLimits(t *testing.T) {
	lim := annotationLimits{perContainerKeys: 2, paths: 3}
	atLimit := map[string]string{
		AnnotationPaths:                hello,
		AnnotationPathsFor + "a":       tools,
		AnnotationPathsFor + "b":       hello,
		"io.kubernetes.cri.sandbox-id": "x",
	}
	if _, err := parseAnnotations(atLimit, lim); err != nil {
		t.Errorf("at the limits: %v", err)
	}

	keys := map[string]string{}
	for i := range 3 {
		keys[fmt.Sprintf("%sc%d", AnnotationPathsFor, i)] = hello
	}
	_, err := parseAnnotations(keys, lim)
	if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "annotation "+AnnotationPathsFor+"c2: the pod has 3 "+AnnotationPathsFor+"<container> annotations, more than the node's limit of 2 (runtime option MaxPathAnnotations)") {
		t.Errorf("3 keys: %v", err)
	}
	// Keys are counted before their values are read.
	keys[AnnotationPathsFor+"c0"] = "/usr/bin/env"
	if _, err := parseAnnotations(keys, lim); err == nil || !strings.Contains(err.Error(), "MaxPathAnnotations") {
		t.Errorf("3 keys, one bad: %v", err)
	}

	other := cachetestPath("other")
	_, err = parseAnnotations(map[string]string{
		AnnotationPaths:          hello + " " + tools,
		AnnotationPathsFor + "a": tools + "," + other,
	}, lim)
	if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "annotation "+AnnotationPathsFor+"a: the pod's "+AnnotationPaths+" annotations name 4 or more store paths, more than the node's limit of 3 (runtime option MaxPathsPerPod)") {
		t.Errorf("4 paths: %v", err)
	}

	if _, err := parseAnnotations(keys, annotationLimits{}); err == nil || strings.Contains(err.Error(), "MaxPathAnnotations") {
		t.Errorf("no limits: %v, want only the bad path refused", err)
	}
}

// cachetestPath is a well-formed store path named name.
func cachetestPath(name string) string {
	return "/nix/store/0c7h3rqvq0m0k0v8w3w1nkxn8x8v3v2a-" + name
}
