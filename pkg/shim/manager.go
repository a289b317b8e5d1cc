package shim

import (
	"context"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
)

// NewManager returns runc's shim manager, named name, which also answers
// the `start` of containerd 1.x.
//
// How the two callers differ at `start`: containerd 2.3 writes a
// bootstrap.v1.BootstrapParams to the shim's stdin, with its version in
// containerd_version; containerd 1.7 (and 2.0 to 2.2) write the runtime
// options as a marshalled Any, or nothing. Both pass the same flags
// (-namespace, -address, -publish-binary, -id) and environment
// (TTRPC_ADDRESS, GRPC_ADDRESS, NAMESPACE, MAX_SHIM_VERSION=2). An Any can
// never fill containerd_version (field 4; an Any has fields 1 and 2 only),
// so a start without it comes from a containerd that predates the
// bootstrap protocol.
func NewManager(name string) shim.Shim {
	return compatManager{Shim: manager.NewShimManager(name)}
}

type compatManager struct {
	shim.Shim
}

// Stop is the `delete` command, containerd's cleanup after a shim that is
// gone: runc's (runc delete, unmount the rootfs), then the removal of any
// skeleton an earlier storepkg built in the bundle's rootfs directory
// (today's lives in the container's snapshot, which runc's part has
// unmounted). containerd then removes the bundle, which it can only do
// when rootfs is an empty directory.
func (m compatManager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	ss, err := m.Shim.Stop(ctx, id)
	if err != nil {
		return ss, err
	}
	// The bundle as runc's manager finds it: the shim runs in it.
	if cwd, err := os.Getwd(); err == nil {
		removeSkeleton(ctx, filepath.Join(filepath.Dir(cwd), id))
	}
	return ss, nil
}

// removeSkeleton empties the rootfs directory of a container that ran
// from store paths (by its bundle's config.json) when nothing is mounted
// there: a no-op for today's containers, the skeleton of those an
// earlier storepkg started. Other containers' rootfs is left to
// containerd.
func removeSkeleton(ctx context.Context, bundle string) {
	spec, err := readSpec(bundle)
	if err != nil || spec.Annotations[criContainerType] == criTypeSandbox {
		return
	}
	pp, err := parseAnnotations(spec.Annotations, annotationLimits{}, anySystem)
	if err != nil || len(pp.forContainer(spec.Annotations[criContainerName])) == 0 {
		return
	}
	if err := clearRootfs(rootfsOf(bundle, spec)); err != nil {
		log.G(ctx).WithError(err).Warn("storepkg: removing the container view of a gone shim")
	}
}
