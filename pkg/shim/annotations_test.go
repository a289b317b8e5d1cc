package shim

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/storepkg/storepkg/pkg/storepath"
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
	}, annotationLimits{}, "x86_64-linux")
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
	none, err := parseAnnotations(map[string]string{"other": "x"}, annotationLimits{}, "x86_64-linux")
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
		_, err := parseAnnotations(c.annotations, annotationLimits{}, "x86_64-linux")
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
	if _, err := parseAnnotations(atLimit, lim, "x86_64-linux"); err != nil {
		t.Errorf("at the limits: %v", err)
	}

	keys := map[string]string{}
	for i := range 3 {
		keys[fmt.Sprintf("%sc%d", AnnotationPathsFor, i)] = hello
	}
	_, err := parseAnnotations(keys, lim, "x86_64-linux")
	if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "annotation "+AnnotationPathsFor+"c2: the pod has 3 "+AnnotationPathsFor+"<container> annotations, more than the node's limit of 2 (runtime option MaxPathAnnotations)") {
		t.Errorf("3 keys: %v", err)
	}
	// Keys are counted before their values are read.
	keys[AnnotationPathsFor+"c0"] = "/usr/bin/env"
	if _, err := parseAnnotations(keys, lim, "x86_64-linux"); err == nil || !strings.Contains(err.Error(), "MaxPathAnnotations") {
		t.Errorf("3 keys, one bad: %v", err)
	}

	other := cachetestPath("other")
	_, err = parseAnnotations(map[string]string{
		AnnotationPaths:          hello + " " + tools,
		AnnotationPathsFor + "a": tools + "," + other,
	}, lim, "x86_64-linux")
	if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "annotation "+AnnotationPathsFor+"a: the pod's "+AnnotationPaths+" annotations name 4 or more store paths, more than the node's limit of 3 (runtime option MaxPathsPerPod)") {
		t.Errorf("4 paths: %v", err)
	}

	if _, err := parseAnnotations(keys, annotationLimits{}, "x86_64-linux"); err == nil || strings.Contains(err.Error(), "MaxPathAnnotations") {
		t.Errorf("no limits: %v, want only the bad path refused", err)
	}
}

// cachetestPath is a well-formed store path named name.
func cachetestPath(name string) string {
	return "/nix/store/0c7h3rqvq0m0k0v8w3w1nkxn8x8v3v2a-" + name
}

// TestParseAnnotationsPerSystem: a node takes the plain paths and those
// for its own system, once each, whatever the order; the same pod gives
// each system its own.
func TestParseAnnotationsPerSystem(t *testing.T) {
	helloArm := cachetestPath("hello-aarch64")
	config := cachetestPath("config")
	annotations := map[string]string{
		AnnotationPaths: "aarch64-linux:" + helloArm + " x86_64-linux:" + hello + ", " + config +
			"\nx86_64-linux:" + tools + " aarch64-linux:" + config,
		AnnotationPathsFor + "sidecar": "x86_64-linux:" + tools + " aarch64-linux:" + helloArm,
	}
	for system, want := range map[string]struct{ app, sidecar []string }{
		"x86_64-linux":  {[]string{hello, config, tools}, []string{tools}},
		"aarch64-linux": {[]string{helloArm, config}, []string{helloArm}},
		anySystem:       {[]string{helloArm, hello, config, tools}, []string{tools, helloArm}},
	} {
		pp, err := parseAnnotations(annotations, annotationLimits{}, system)
		if err != nil {
			t.Fatalf("%s: %v", system, err)
		}
		if got := absolutes(pp.forContainer("app")); !slices.Equal(got, want.app) {
			t.Errorf("%s: app takes %v, want %v", system, got, want.app)
		}
		if got := absolutes(pp.forContainer("sidecar")); !slices.Equal(got, want.sidecar) {
			t.Errorf("%s: sidecar takes %v, want %v", system, got, want.sidecar)
		}
	}

	// Plain paths are for every system, on any node.
	pp, err := parseAnnotations(map[string]string{AnnotationPaths: hello}, annotationLimits{}, "riscv64-linux")
	if err != nil || !slices.Equal(absolutes(pp.forContainer("app")), []string{hello}) {
		t.Errorf("plain path on riscv64-linux: %v, %v", pp, err)
	}

	// The node's limit counts the paths it takes, not the other systems'.
	both := map[string]string{AnnotationPaths: "x86_64-linux:" + hello + " aarch64-linux:" + helloArm + " x86_64-linux:" + tools + " aarch64-linux:" + config}
	if _, err := parseAnnotations(both, annotationLimits{paths: 2}, "x86_64-linux"); err != nil {
		t.Errorf("2 paths per system, limit 2: %v", err)
	}
}

// TestParseAnnotationsNotForThisSystem: a list of per-system paths none
// of which is for the node's system is refused with FailedPrecondition,
// naming the annotation, the node's system and the systems it has, even
// with plain paths beside them.
func TestParseAnnotationsNotForThisSystem(t *testing.T) {
	arm := "aarch64-linux:" + hello
	for name, c := range map[string]struct {
		annotations map[string]string
		key, want   string
	}{
		"only aarch64": {map[string]string{AnnotationPaths: arm}, AnnotationPaths,
			"annotation storepkg.dev/paths: no store paths for this node's system x86_64-linux (the annotation names paths for aarch64-linux; plain paths are for every system)"},
		"plain beside": {map[string]string{AnnotationPaths: tools + " " + arm + " riscv64-linux:" + hello}, AnnotationPaths,
			"annotation storepkg.dev/paths: no store paths for this node's system x86_64-linux (the annotation names paths for aarch64-linux, riscv64-linux; plain paths are for every system)"},
		"one container": {map[string]string{AnnotationPaths: "x86_64-linux:" + hello, AnnotationPathsFor + "side": arm}, AnnotationPathsFor + "side",
			"annotation storepkg.dev/paths.side: no store paths for this node's system x86_64-linux"},
	} {
		_, err := parseAnnotations(c.annotations, annotationLimits{}, "x86_64-linux")
		if err == nil || !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want FailedPrecondition saying %q", name, err, c.want)
		}
	}
	// A node whose system Go cannot name says how to set it.
	_, err := parseAnnotations(map[string]string{AnnotationPaths: arm}, annotationLimits{}, "")
	if err == nil || !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "this node's Nix system is unknown") || !strings.Contains(err.Error(), "runtime option System") {
		t.Errorf("unknown node system: %v", err)
	}
}

// TestParseAnnotationsSystemSyntax: the <system>:<path> form is parsed
// strictly: an unknown or empty system, a missing path, or a bad path
// after a good system is an InvalidArgument naming the annotation.
func TestParseAnnotationsSystemSyntax(t *testing.T) {
	for name, c := range map[string]struct{ value, want string }{
		"typo":             {"arm64-linux:" + hello, `unknown Nix system "arm64-linux"`},
		"not linux":        {"x86_64-darwin:" + hello, `unknown Nix system "x86_64-darwin"`},
		"empty system":     {":" + hello, `unknown Nix system ""`},
		"space after":      {"x86_64-linux: " + hello, `"x86_64-linux:" names no store path`},
		"two systems":      {"x86_64-linux:aarch64-linux:" + hello, "not in /nix/store"},
		"not a store path": {"x86_64-linux:/usr/bin/env", "not in /nix/store"},
		"file inside":      {"aarch64-linux:" + hello + "/bin/hello", "names a file inside"},
		"case":             {"X86_64-Linux:" + hello, `unknown Nix system "X86_64-Linux"`},
	} {
		_, err := parseAnnotations(map[string]string{AnnotationPaths: c.value}, annotationLimits{}, "x86_64-linux")
		if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) ||
			!strings.HasPrefix(err.Error(), "annotation "+AnnotationPaths+": ") {
			t.Errorf("%s: %v, want InvalidArgument naming the annotation and saying %q", name, err, c.want)
		}
	}
}

func absolutes(ps []storepath.Path) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Absolute())
	}
	return out
}
