package shim

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// The annotation contract (DESIGN.md): pods choose paths only.
const (
	annotationPrefix = "storepkg.dev/"
	// AnnotationPaths lists store paths for every app container of the pod.
	AnnotationPaths = annotationPrefix + "paths"
	// AnnotationPathsFor + "<container name>" overrides it for one container.
	AnnotationPathsFor = AnnotationPaths + "."
)

// Annotations the CRI plugin sets on every sandbox and container spec.
const (
	criContainerType = "io.kubernetes.cri.container-type"
	criContainerName = "io.kubernetes.cri.container-name"
	criSandboxID     = "io.kubernetes.cri.sandbox-id"
	criImageName     = "io.kubernetes.cri.image-name"
	criTypeSandbox   = "sandbox"
)

// podPaths is what a pod's annotations ask for.
type podPaths struct {
	all          []storepath.Path            // storepkg.dev/paths
	perContainer map[string][]storepath.Path // storepkg.dev/paths.<name>
}

// annotationLimits bound what one pod's annotations may ask for (the
// node's MaxPathAnnotations and MaxPathsPerPod); 0: no bound.
type annotationLimits struct {
	perContainerKeys int // storepkg.dev/paths.<container> keys
	paths            int // store paths, summed over all keys
}

// parseAnnotations validates every storepkg.dev/ annotation and keeps the
// paths for system, the node's Nix system (anySystem: every system's). A
// mistake is an InvalidArgument error naming the annotation, so `kubectl
// describe` says exactly which key and path are wrong. A pod over a node
// limit is refused the same way, naming the annotation and the node's
// option; a pod whose per-system paths leave out the node's system is
// refused with FailedPrecondition, naming the annotation and the system.
func parseAnnotations(annotations map[string]string, lim annotationLimits, system string) (*podPaths, error) {
	pp := &podPaths{perContainer: map[string][]storepath.Path{}}
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	// Each key may start a fetch child: count them before reading any.
	var perContainer []string
	for _, k := range keys {
		if strings.HasPrefix(k, AnnotationPathsFor) && len(k) > len(AnnotationPathsFor) {
			perContainer = append(perContainer, k)
		}
	}
	if lim.perContainerKeys > 0 && len(perContainer) > lim.perContainerKeys {
		return nil, fmt.Errorf("annotation %s: the pod has %d %s<container> annotations, more than the node's limit of %d (runtime option MaxPathAnnotations): %w",
			perContainer[lim.perContainerKeys], len(perContainer), AnnotationPathsFor, lim.perContainerKeys, errdefs.ErrInvalidArgument)
	}
	total := 0
	for _, k := range keys {
		var name string
		switch {
		case k == AnnotationPaths:
		case strings.HasPrefix(k, AnnotationPathsFor) && len(k) > len(AnnotationPathsFor):
			name = k[len(AnnotationPathsFor):]
		default:
			return nil, fmt.Errorf("annotation %s: unknown storepkg annotation (known: %s, %s<container>): %w",
				k, AnnotationPaths, AnnotationPathsFor, errdefs.ErrInvalidArgument)
		}
		l, err := parsePathList(annotations[k], system)
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %v: %w", k, err, errdefs.ErrInvalidArgument)
		}
		paths := l.paths
		switch {
		case len(l.systems) > 0 && system == "":
			return nil, fmt.Errorf("annotation %s: names paths per system, and this node's Nix system is unknown (GOARCH %s): set the runtime option System: %w",
				k, runtime.GOARCH, errdefs.ErrFailedPrecondition)
		case len(l.systems) > 0 && !l.ownSystem:
			// A list written per system is for the systems it names: the
			// plain paths beside them alone are not the program.
			return nil, fmt.Errorf("annotation %s: no store paths for this node's system %s (the annotation names paths for %s; plain paths are for every system): %w",
				k, system, strings.Join(l.systems, ", "), errdefs.ErrFailedPrecondition)
		case len(paths) == 0:
			return nil, fmt.Errorf("annotation %s: no store paths: %w", k, errdefs.ErrInvalidArgument)
		}
		if total += len(paths); lim.paths > 0 && total > lim.paths {
			return nil, fmt.Errorf("annotation %s: the pod's %s annotations name %d or more store paths, more than the node's limit of %d (runtime option MaxPathsPerPod): %w",
				k, AnnotationPaths, total, lim.paths, errdefs.ErrInvalidArgument)
		}
		if name == "" {
			pp.all = paths
		} else {
			pp.perContainer[name] = paths
		}
	}
	return pp, nil
}

// forContainer returns the paths for the named container, or nil if it
// runs from its image.
func (pp *podPaths) forContainer(name string) []storepath.Path {
	if p, ok := pp.perContainer[name]; ok {
		return p
	}
	return pp.all
}

// lists returns every distinct path list the pod names, for prefetching.
func (pp *podPaths) lists() [][]storepath.Path {
	var out [][]storepath.Path
	if len(pp.all) > 0 {
		out = append(out, pp.all)
	}
	names := make([]string, 0, len(pp.perContainer))
	for n := range pp.perContainer {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, pp.perContainer[n])
	}
	return out
}

// union returns every store path the pod names, once.
func (pp *podPaths) union() []storepath.Path {
	seen := map[storepath.Path]bool{}
	var out []storepath.Path
	for _, l := range pp.lists() {
		for _, p := range l {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// pathList is one annotation's value as a node reads it.
type pathList struct {
	paths     []storepath.Path // plain ones and the node system's, once each
	systems   []string         // the systems it names paths for, sorted
	ownSystem bool             // whether one of them is the node's
}

// parsePathList reads a list of store paths, each plain (for every
// system) or written <system>:<path> (for nodes of that Nix system only),
// separated by commas or white space. A store path never holds a colon
// (Nix's name characters are [A-Za-z0-9+-._?=]), so the form is
// unambiguous. It keeps the plain paths and those for system.
func parsePathList(s, system string) (pathList, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	var l pathList
	seen := map[storepath.Path]bool{}
	for _, f := range fields {
		sys, abs, qualified := strings.Cut(f, ":")
		if !qualified {
			abs = f
		} else {
			if !isKnownSystem(sys) {
				return pathList{}, fmt.Errorf("%q: unknown Nix system %q (write <system>:/nix/store/..., with one of %s)", f, sys, strings.Join(knownSystems, ", "))
			}
			if abs == "" {
				return pathList{}, fmt.Errorf("%q names no store path (write <system>:/nix/store/..., with nothing between)", f)
			}
			if !slices.Contains(l.systems, sys) {
				l.systems = append(l.systems, sys)
			}
		}
		p, err := storepath.Parse(abs)
		if err != nil {
			return pathList{}, err
		}
		if qualified && sys != system && system != anySystem {
			continue
		}
		l.ownSystem = l.ownSystem || qualified
		if !seen[p] {
			seen[p] = true
			l.paths = append(l.paths, p)
		}
	}
	slices.Sort(l.systems)
	return l, nil
}
