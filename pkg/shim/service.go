package shim

// The task service, whichever task API containerd speaks: runc's service
// with storepkg's create, exec and delete. containerd 2.x calls it in task
// API v3 (task_v3.go); containerd 1.7 in v2, forwarded to v3 (task_v2.go).

import (
	"context"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// service is runc's task service with storepkg's create, exec and delete.
type service struct {
	taskAPI.TTRPCTaskService
	core *core
}

// prepareCreate translates the runtime options for runc and, for a
// container with store paths, substitutes its closure and rewrites its
// bundle. The sandbox is never rewritten; its create starts the pod's
// prefetch. Containers without paths run from their image unchanged.
func (s *service) prepareCreate(ctx context.Context, r *taskAPI.CreateTaskRequest) error {
	cfg, err := parseOptions(r.Options)
	if err != nil {
		return err
	}
	if r.Options, err = cfg.runcOptions(); err != nil {
		return err
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return err
	}
	s.core.notePod(spec.Annotations)
	pp, err := parseAnnotations(spec.Annotations, cfg.annotationLimits(), cfg.nodeSystem())
	if err == nil {
		s.core.notePodPaths(pp.union())
	}
	if spec.Annotations[criContainerType] == criTypeSandbox {
		// The sandbox runs as it is; a bad annotation is reported by the
		// create of each container it concerns, by name.
		if err == nil {
			err = s.core.prefetch(ctx, cfg, r.ID, pp)
		}
		if err != nil {
			log.G(ctx).WithError(err).Warn("storepkg: prefetch not started")
		}
		return nil
	}
	if err != nil {
		return err
	}
	name := spec.Annotations[criContainerName]
	paths := pp.forContainer(name)
	if len(paths) == 0 {
		return nil
	}
	if len(r.Checkpoint) > 0 {
		return errdefsf(errdefs.ErrNotImplemented, "storepkg: checkpoint/restore of store-path containers")
	}
	// r.Rootfs stays: runc's task service mounts the container's snapshot,
	// now holding the skeleton, as its root.
	return s.core.prepareContainer(ctx, cfg, r.ID, r.Bundle, spec, paths, r.Rootfs)
}
