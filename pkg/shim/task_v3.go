package shim

// The containerd-version-specific part: containerd 2.x speaks the task
// API v3 to shims; containerd 1.7's task API v2 is in task_v2.go.

import (
	"context"
	"fmt"
	"os/exec"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/containerd/ttrpc"
)

// Register adds the storepkg task service to the shim's plugins, in the
// place of runc's (which it wraps).
func Register() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			runc, err := task.NewTaskService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			c := newCore()
			c.startChild = startReaped
			return &service{TTRPCTaskService: runc, core: c}, nil
		},
	})
}

// startReaped starts a child of the shim through containerd's reaper,
// which reaps every child of the shim: os/exec's own wait would find its
// exit status taken.
func startReaped(cmd *exec.Cmd) (func() error, error) {
	ec, err := reaper.Default.Start(cmd)
	if err != nil {
		return nil, err
	}
	return func() error {
		status, err := reaper.Default.Wait(cmd, ec)
		if err != nil {
			return err
		}
		if status != 0 {
			return fmt.Errorf("exit status %d", status)
		}
		return nil
	}, nil
}

// service is runc's task service with storepkg's create, exec and delete.
type service struct {
	taskAPI.TTRPCTaskService
	core *core
}

func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	registerV2(server, s)
	return nil
}

func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if err := s.prepareCreate(ctx, r); err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Error("storepkg: create")
		return nil, errgrpc.ToGRPC(err)
	}
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		s.core.containerDeleted(ctx, r.ID)
	}
	return resp, err
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
	pp, err := parseAnnotations(spec.Annotations)
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
	if err := s.core.prepareContainer(ctx, cfg, r.ID, r.Bundle, spec, paths); err != nil {
		return err
	}
	// The image's layers are ignored: the view replaces them.
	r.Rootfs = nil
	return nil
}

func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	if err := s.core.execEnv(r.ID, r.Spec); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return s.TTRPCTaskService.Exec(ctx, r)
}

func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if r.ExecID == "" && (err == nil || errdefs.IsNotFound(errgrpc.ToNative(err))) {
		s.core.containerDeleted(ctx, r.ID)
	}
	return resp, err
}
