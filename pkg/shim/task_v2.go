package shim

// The containerd 1.x part: containerd 1.7 starts a shim without the
// bootstrap protocol of 2.3 and wants its answer as JSON of version 2, then
// speaks the task API v2 (service containerd.task.v2.Task). Everything it
// calls is forwarded to the v3 service of task_v3.go.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// legacyStartResult is what containerd 1.7 reads from a shim's start
// (runtime/v2 parseStartResponse): version 2 means task API v2 over
// protocol at address.
type legacyStartResult struct {
	Version  int    `json:"version"`
	Address  string `json:"address"`
	Protocol string `json:"protocol"`
}

func (m compatManager) Start(ctx context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	if params.GetContainerdVersion() != "" {
		return m.Shim.Start(ctx, params) // containerd 2.3 and later: as runc's shim
	}
	lp := legacyParams(ctx, params)
	res, err := m.Shim.Start(ctx, lp)
	if err != nil {
		return nil, err
	}
	if err := writeAddress(addressFile, res.GetAddress()); err != nil {
		// containerd fails the start, so no one would ever stop the
		// server just started (it exits on Shutdown once it runs nothing;
		// one a sandbox shares keeps running).
		shutdownServer(ctx, res.GetAddress(), lp.InstanceID)
		return nil, err
	}
	data, err := json.Marshal(legacyStartResult{Version: 2, Address: res.GetAddress(), Protocol: res.GetProtocol()})
	if err != nil {
		return nil, err
	}
	// containerd's shim framework writes the result it gets back, as
	// protobuf, to os.Stdout, which containerd 1.x would read as a
	// malformed address: the JSON goes to the real stdout, the protobuf
	// to /dev/null.
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	stdout := os.Stdout
	os.Stdout = devNull
	if _, err := stdout.Write(data); err != nil {
		return nil, fmt.Errorf("write start result: %w", err)
	}
	return res, nil
}

// addressFile is where containerd 1.7's own shims left their socket's
// address at start, in the bundle (the shim's working directory), and
// where 1.7, restarted, looks to reconnect to them (runtime/v2 loadShim):
// without it, it takes the shim for dead, runs its delete and the pod is
// lost. runc's 2.3 manager no longer writes it: 2.0 and later keep the
// start answer themselves (bootstrap.json) and read this file only for a
// bundle without one. The shim's own shutdown reads it to remove its
// socket.
const addressFile = "address"

// writeAddress writes the plain socket address (what 1.7's shims wrote;
// 1.7 also takes it for a ttrpc address of task API v2) to path, whole
// or not at all.
func writeAddress(path, address string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("storepkg: shim address file %s: %w", path, err)
	}
	if err := replaceFile(abs, []byte(address)); err != nil {
		return fmt.Errorf("storepkg: writing shim address file %s: %w", abs, err)
	}
	return nil
}

// shutdownServer asks the shim server at address to exit, best effort.
func shutdownServer(ctx context.Context, address, id string) {
	conn, err := shim.AnonDialer(address, time.Second)
	if err != nil {
		log.G(ctx).WithError(err).Warn("storepkg: shutting down the shim after a failed start")
		return
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := taskAPI.NewTTRPCTaskClient(client).Shutdown(ctx, &taskAPI.ShutdownRequest{ID: id}); err != nil {
		log.G(ctx).WithError(err).Warn("storepkg: shutting down the shim after a failed start")
	}
}

// legacyParams rebuilds the bootstrap parameters from the flags and the
// environment, as containerd's framework does when stdin does not parse as
// BootstrapParams. A 1.7 Any may parse as one (its type URL and value
// landing in instance_id and namespace), so params is trusted only for the
// runtime options it found, and only when its instance ID is the -id flag.
func legacyParams(ctx context.Context, params *bootapi.BootstrapParams) *bootapi.BootstrapParams {
	ns, _ := namespaces.Namespace(ctx)
	p := &bootapi.BootstrapParams{
		InstanceID:             flagValue("id"),
		Namespace:              ns,
		ContainerdTtrpcAddress: os.Getenv("TTRPC_ADDRESS"),
		ContainerdGrpcAddress:  flagValue("address"),
		ContainerdBinary:       flagValue("publish-binary"),
	}
	if flagValue("debug") == "true" {
		p.LogLevel = bootapi.LogLevel_LOG_LEVEL_DEBUG
	}
	if params.GetInstanceID() == p.InstanceID {
		p.Extensions = params.GetExtensions()
	}
	return p
}

// flagValue is the value of one of the flags containerd's shim framework
// defines on the command line's flag set.
func flagValue(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// serviceV2 serves the task API v2 by forwarding every call to the v3
// service (storepkg's, so its Create, Exec and Delete apply). The two
// APIs' messages have the same fields under the same numbers; a message
// crosses by marshalling it in one and unmarshalling it in the other.
type serviceV2 struct {
	v3 taskAPI.TTRPCTaskService
}

func registerV2(server *ttrpc.Server, v3 taskAPI.TTRPCTaskService) {
	taskv2.RegisterTTRPCTaskService(server, &serviceV2{v3: v3})
}

// convert copies in into a new message of type T by its wire form.
func convert[T any, PT interface {
	*T
	proto.Message
}](in proto.Message) (PT, error) {
	out := PT(new(T))
	data, err := proto.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("task API v2: marshal %T: %w", in, err)
	}
	if err := proto.Unmarshal(data, out); err != nil {
		return nil, fmt.Errorf("task API v2: unmarshal %T as %T: %w", in, out, err)
	}
	return out, nil
}

// forward converts a v2 request to v3, calls the v3 method and converts
// its response back.
func forward[Req3, Resp3, Resp2 any, PReq3 interface {
	*Req3
	proto.Message
}, PResp3 interface {
	*Resp3
	proto.Message
}, PResp2 interface {
	*Resp2
	proto.Message
}](ctx context.Context, r proto.Message, call func(context.Context, PReq3) (PResp3, error)) (PResp2, error) {
	req, err := convert[Req3, PReq3](r)
	if err != nil {
		return nil, err
	}
	resp, err := call(ctx, req)
	if err != nil {
		return nil, err
	}
	return convert[Resp2, PResp2](resp)
}

type empty = emptypb.Empty

func (s *serviceV2) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	return forward[taskAPI.StateRequest, taskAPI.StateResponse, taskv2.StateResponse](ctx, r, s.v3.State)
}

func (s *serviceV2) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	return forward[taskAPI.CreateTaskRequest, taskAPI.CreateTaskResponse, taskv2.CreateTaskResponse](ctx, r, s.v3.Create)
}

func (s *serviceV2) Start(ctx context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	return forward[taskAPI.StartRequest, taskAPI.StartResponse, taskv2.StartResponse](ctx, r, s.v3.Start)
}

func (s *serviceV2) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	return forward[taskAPI.DeleteRequest, taskAPI.DeleteResponse, taskv2.DeleteResponse](ctx, r, s.v3.Delete)
}

func (s *serviceV2) Pids(ctx context.Context, r *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	return forward[taskAPI.PidsRequest, taskAPI.PidsResponse, taskv2.PidsResponse](ctx, r, s.v3.Pids)
}

func (s *serviceV2) Pause(ctx context.Context, r *taskv2.PauseRequest) (*empty, error) {
	return forward[taskAPI.PauseRequest, empty, empty](ctx, r, s.v3.Pause)
}

func (s *serviceV2) Resume(ctx context.Context, r *taskv2.ResumeRequest) (*empty, error) {
	return forward[taskAPI.ResumeRequest, empty, empty](ctx, r, s.v3.Resume)
}

func (s *serviceV2) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (*empty, error) {
	return forward[taskAPI.CheckpointTaskRequest, empty, empty](ctx, r, s.v3.Checkpoint)
}

func (s *serviceV2) Kill(ctx context.Context, r *taskv2.KillRequest) (*empty, error) {
	return forward[taskAPI.KillRequest, empty, empty](ctx, r, s.v3.Kill)
}

func (s *serviceV2) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (*empty, error) {
	return forward[taskAPI.ExecProcessRequest, empty, empty](ctx, r, s.v3.Exec)
}

func (s *serviceV2) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (*empty, error) {
	return forward[taskAPI.ResizePtyRequest, empty, empty](ctx, r, s.v3.ResizePty)
}

func (s *serviceV2) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (*empty, error) {
	return forward[taskAPI.CloseIORequest, empty, empty](ctx, r, s.v3.CloseIO)
}

func (s *serviceV2) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (*empty, error) {
	return forward[taskAPI.UpdateTaskRequest, empty, empty](ctx, r, s.v3.Update)
}

func (s *serviceV2) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	return forward[taskAPI.WaitRequest, taskAPI.WaitResponse, taskv2.WaitResponse](ctx, r, s.v3.Wait)
}

func (s *serviceV2) Stats(ctx context.Context, r *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return forward[taskAPI.StatsRequest, taskAPI.StatsResponse, taskv2.StatsResponse](ctx, r, s.v3.Stats)
}

func (s *serviceV2) Connect(ctx context.Context, r *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	return forward[taskAPI.ConnectRequest, taskAPI.ConnectResponse, taskv2.ConnectResponse](ctx, r, s.v3.Connect)
}

func (s *serviceV2) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*empty, error) {
	return forward[taskAPI.ShutdownRequest, empty, empty](ctx, r, s.v3.Shutdown)
}
