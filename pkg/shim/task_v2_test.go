package shim

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestTaskAPIsAgree: every method of the task API v2 has a v3 twin whose
// request and response have the same fields (number, name, kind,
// cardinality, message type up to the package), recursively, so the
// forwarding by wire form loses nothing.
func TestTaskAPIsAgree(t *testing.T) {
	v2 := taskv2.File_runtime_task_v2_shim_proto.Services().ByName("Task")
	v3 := taskAPI.File_runtime_task_v3_shim_proto.Services().ByName("Task")
	if v2 == nil || v3 == nil {
		t.Fatal("Task service not found")
	}
	if v2.Methods().Len() != v3.Methods().Len() {
		t.Errorf("v2 has %d methods, v3 %d", v2.Methods().Len(), v3.Methods().Len())
	}
	for i := 0; i < v2.Methods().Len(); i++ {
		m2 := v2.Methods().Get(i)
		m3 := v3.Methods().ByName(m2.Name())
		if m3 == nil {
			t.Errorf("v3 has no method %s", m2.Name())
			continue
		}
		sameMessage(t, string(m2.Name())+" input", m2.Input(), m3.Input(), map[protoreflect.FullName]bool{})
		sameMessage(t, string(m2.Name())+" output", m2.Output(), m3.Output(), map[protoreflect.FullName]bool{})
	}
}

func sameMessage(t *testing.T, where string, a, b protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) {
	t.Helper()
	if seen[a.FullName()] {
		return
	}
	seen[a.FullName()] = true
	if a.Name() != b.Name() || a.Fields().Len() != b.Fields().Len() {
		t.Errorf("%s: %s (%d fields) vs %s (%d fields)", where, a.FullName(), a.Fields().Len(), b.FullName(), b.Fields().Len())
		return
	}
	for i := 0; i < a.Fields().Len(); i++ {
		fa := a.Fields().Get(i)
		fb := b.Fields().ByNumber(fa.Number())
		if fb == nil || fa.Name() != fb.Name() || fa.Kind() != fb.Kind() || fa.Cardinality() != fb.Cardinality() {
			t.Errorf("%s: field %d of %s differs from %s's", where, fa.Number(), a.FullName(), b.FullName())
			continue
		}
		if fa.Message() != nil {
			if fa.Message().Name() != fb.Message().Name() {
				t.Errorf("%s: field %s of %s: %s vs %s", where, fa.Name(), a.FullName(), fa.Message().FullName(), fb.Message().FullName())
				continue
			}
			sameMessage(t, where+"."+string(fa.Name()), fa.Message(), fb.Message(), seen)
		}
	}
}

// TestConvertCreate: a full create request crosses from v2 to v3 intact,
// and a response back.
func TestConvertCreate(t *testing.T) {
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("StoreRoot = \"/x\"\n")})
	if err != nil {
		t.Fatal(err)
	}
	in := &taskv2.CreateTaskRequest{
		ID: "c1", Bundle: "/run/b/c1", Terminal: true,
		Stdin: "/s/in", Stdout: "/s/out", Stderr: "/s/err",
		Rootfs:     []*types.Mount{{Type: "overlay", Source: "overlay", Target: "/t", Options: []string{"ro", "lowerdir=/a"}}},
		Checkpoint: "/cp", ParentCheckpoint: "/pcp",
		Options: opts,
	}
	got, err := convert[taskAPI.CreateTaskRequest](in)
	if err != nil {
		t.Fatal(err)
	}
	want := &taskAPI.CreateTaskRequest{
		ID: in.ID, Bundle: in.Bundle, Terminal: in.Terminal, Stdin: in.Stdin, Stdout: in.Stdout, Stderr: in.Stderr,
		Rootfs: in.Rootfs, Checkpoint: in.Checkpoint, ParentCheckpoint: in.ParentCheckpoint, Options: opts,
	}
	if !proto.Equal(got, want) {
		t.Errorf("converted:\n%v\nwant:\n%v", got, want)
	}
	cfg, err := parseOptions(got.Options)
	if err != nil || cfg.StoreRoot != "/x" {
		t.Errorf("options after conversion: %+v, %v", cfg, err)
	}

	resp, err := convert[taskv2.DeleteResponse](&taskAPI.DeleteResponse{Pid: 7, ExitStatus: 137, ExitedAt: timestamppb.New(timestamppb.Now().AsTime())})
	if err != nil || resp.Pid != 7 || resp.ExitStatus != 137 || resp.ExitedAt == nil {
		t.Errorf("delete response: %v, %v", resp, err)
	}
}

// fakeManager records the parameters of Start.
type fakeManager struct {
	shim.Shim
	got *bootapi.BootstrapParams
}

func (f *fakeManager) Start(_ context.Context, p *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	f.got = p
	return &bootapi.BootstrapResult{Version: 3, Address: "unix:///run/containerd/s/abc", Protocol: "ttrpc"}, nil
}

// TestStartAnswersEachContainerd: with bootstrap parameters (containerd
// 2.3) Start is runc's, untouched; with the stdin of containerd 1.7 (the
// runtime options as an Any, which may even parse as BootstrapParams)
// the answer is JSON of version 2 and the parameters come from the flags.
func TestStartAnswersEachContainerd(t *testing.T) {
	for name, value := range map[string]string{"id": "ctr-1", "address": "/run/containerd/containerd.sock", "publish-binary": "/usr/bin/containerd", "debug": "false"} {
		if flag.Lookup(name) == nil {
			flag.String(name, value, "")
		} else if err := flag.Set(name, value); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("TTRPC_ADDRESS", "/run/containerd/containerd.sock.ttrpc")
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	// Start runs in the bundle, where it may leave the address file.
	bundle := t.TempDir()
	t.Chdir(bundle)

	// containerd 2.3: what it writes to stdin.
	fake := &fakeManager{}
	v2params := &bootapi.BootstrapParams{InstanceID: "ctr-1", Namespace: "k8s.io", ContainerdVersion: "2.3.4+unknown"}
	out := captureStdout(t, func() {
		res, err := (compatManager{Shim: fake}).Start(ctx, v2params)
		if err != nil || res.Version != 3 {
			t.Errorf("2.3 start: %v, %v", res, err)
		}
	})
	if out != "" || fake.got != v2params {
		t.Errorf("2.3 start wrote %q itself or changed the parameters (%v)", out, fake.got)
	}
	if entries, _ := os.ReadDir(bundle); len(entries) != 0 {
		t.Errorf("2.3 start left %v in the bundle", entries)
	}

	// containerd 1.7: an Any on stdin, here one that parses as BootstrapParams.
	anyOpts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("MaxJobs = 2\n")})
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := proto.Marshal(anyOpts)
	if err != nil {
		t.Fatal(err)
	}
	var misparsed bootapi.BootstrapParams
	if err := proto.Unmarshal(stdin, &misparsed); err != nil {
		t.Fatalf("the test's Any does not parse as BootstrapParams: %v", err)
	}
	if misparsed.ContainerdVersion != "" || misparsed.InstanceID == "ctr-1" {
		t.Fatalf("misparsed Any: %v", &misparsed)
	}
	fake = &fakeManager{}
	out = captureStdout(t, func() {
		if _, err := (compatManager{Shim: fake}).Start(ctx, &misparsed); err != nil {
			t.Error(err)
		}
	})
	var res legacyStartResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res != (legacyStartResult{Version: 2, Address: "unix:///run/containerd/s/abc", Protocol: "ttrpc"}) {
		t.Errorf("1.7 start wrote %q (%v)", out, err)
	}
	want := &bootapi.BootstrapParams{InstanceID: "ctr-1", Namespace: "k8s.io", ContainerdGrpcAddress: "/run/containerd/containerd.sock",
		ContainerdTtrpcAddress: "/run/containerd/containerd.sock.ttrpc", ContainerdBinary: "/usr/bin/containerd"}
	if !proto.Equal(fake.got, want) {
		t.Errorf("1.7 start parameters:\n%v\nwant:\n%v", fake.got, want)
	}
	// What containerd 1.7, restarted, reconnects with.
	if data, err := os.ReadFile(filepath.Join(bundle, "address")); err != nil || string(data) != "unix:///run/containerd/s/abc" {
		t.Errorf("1.7 start: address file %q, %v", data, err)
	}
	if entries, _ := os.ReadDir(bundle); len(entries) != 1 {
		t.Errorf("1.7 start left %v in the bundle, want the address file only", entries)
	}
}

// shutdownRecorder is a task service that only records Shutdown.
type shutdownRecorder struct {
	taskAPI.TTRPCTaskService
	ids chan string
}

func (s *shutdownRecorder) Shutdown(_ context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.ids <- r.ID
	return &emptypb.Empty{}, nil
}

// TestStartAddressUnwritable: when the address file cannot be written, a
// 1.7 start fails naming it, answers nothing, leaves no partial file and
// asks the server it started to shut down (a ttrpc server on a socket
// stands for it: the real one cannot be made to fail there on demand).
func TestStartAddressUnwritable(t *testing.T) {
	if flag.Lookup("id") == nil {
		flag.String("id", "ctr-2", "")
	} else if err := flag.Set("id", "ctr-2"); err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	bundle := t.TempDir()
	t.Chdir(bundle)
	// A non-empty directory where the file goes: no rename replaces it.
	if err := os.MkdirAll(filepath.Join(bundle, "address", "x"), 0o700); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	rec := &shutdownRecorder{ids: make(chan string, 1)}
	taskAPI.RegisterTTRPCTaskService(server, rec)
	go server.Serve(ctx, l)
	defer server.Close()

	fake := &fakeAddressManager{address: "unix://" + sock}
	var startErr error
	out := captureStdout(t, func() {
		_, startErr = (compatManager{Shim: fake}).Start(ctx, &bootapi.BootstrapParams{})
	})
	if startErr == nil || !strings.Contains(startErr.Error(), filepath.Join(bundle, "address")) {
		t.Errorf("start: %v, want an error naming %s", startErr, filepath.Join(bundle, "address"))
	}
	if out != "" {
		t.Errorf("a failed start answered %q", out)
	}
	entries, _ := os.ReadDir(bundle)
	if len(entries) != 1 || entries[0].Name() != "address" {
		t.Errorf("the bundle holds %v after the failed start", entries)
	}
	select {
	case id := <-rec.ids:
		if id != "ctr-2" {
			t.Errorf("Shutdown of %q, want ctr-2", id)
		}
	case <-time.After(10 * time.Second):
		t.Error("the started server was not asked to shut down")
	}
}

// fakeAddressManager answers Start with a server at address.
type fakeAddressManager struct {
	shim.Shim
	address string
}

func (f *fakeAddressManager) Start(context.Context, *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	return &bootapi.BootstrapResult{Version: 3, Address: f.address, Protocol: "ttrpc"}, nil
}

// captureStdout runs f with os.Stdout a pipe and returns what reached it.
// Start may replace os.Stdout (with /dev/null): it is restored after.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	saved := os.Stdout
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	f()
	if os.Stdout != w {
		os.Stdout.Close()
	}
	os.Stdout = saved
	w.Close()
	return strings.TrimSpace(<-done)
}
