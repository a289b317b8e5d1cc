package shim

// The task API v3, which containerd 2.x speaks to shims: the calls
// storepkg takes before or after runc's (service.go). containerd 1.7's
// task API v2 is in task_v2.go.

import (
	"context"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

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
