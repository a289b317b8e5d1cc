package nodeinstall

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/storepkg/storepkg/internal/toolcache"
)

// TestCRIProbeRealContainerd starts real containerd (every version of the
// matrix) with our runtime table (as install writes it) and asks its CRI
// plugin, as the installer does before labelling the node.
func TestCRIProbeRealContainerd(t *testing.T) {
	for _, v := range append([]string{"v2.3.4"}, toolcache.ContainerdMatrix...) {
		t.Run(v, func(t *testing.T) {
			bin := containerdBin(t, v)
			version := 3
			if strings.HasPrefix(v, "v1.") {
				version = 2
			}
			dir, err := os.MkdirTemp("", "sp-cri-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			table := runtimeTable(version, "/opt/storepkg/bin/"+ShimBinary, DefaultNodeConfig)
			if version == 2 {
				// As install writes it for a 1.x config that names no
				// runtime (see TestContainerd17DropsBuiltinRunc).
				table = renderTable(runtimesKey(2)+".runc", map[string]any{"runtime_type": "io.containerd.runc.v2"}) + "\n" + table
			}
			socket := startContainerd(t, bin, dir, version, table)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var st *CRIStatus
			for {
				if st, err = Status(ctx, socket); err == nil {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatalf("CRI status: %v", err)
				case <-time.After(200 * time.Millisecond):
				}
			}
			t.Logf("conditions %v, handlers %v, configured runtimes %v", st.Conditions, st.Handlers, st.ConfiguredRuntimes)
			if !st.HasRuntime(RuntimeName) || !st.HasRuntime("runc") {
				t.Errorf("containerd %s does not report the storepkg and runc runtimes", v)
			}
			if err := CRIProbe(socket, RuntimeName)(ctx); err != nil {
				t.Errorf("probe: %v", err)
			}
			if err := CRIProbe(socket, "nosuch")(ctx); err == nil || !strings.Contains(err.Error(), "not \"nosuch\"") {
				t.Errorf("probe for a runtime containerd lacks: %v", err)
			}
		})
	}
}

// fakeCRI answers the CRI Status call with resp.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	resp    *runtimeapi.StatusResponse
	verbose bool // the last request asked for verbose status
}

func (f *fakeCRI) Status(_ context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	f.verbose = r.GetVerbose()
	return f.resp, nil
}

// serveCRI serves a gRPC server on a unix socket in a new directory,
// with the CRI runtime service when rs is not nil, and returns the socket.
func serveCRI(t *testing.T, rs runtimeapi.RuntimeServiceServer) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sp-cri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	if rs != nil {
		runtimeapi.RegisterRuntimeServiceServer(srv, rs)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return socket
}

func readyResponse(handlers []string, info map[string]string) *runtimeapi.StatusResponse {
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			{Type: runtimeapi.NetworkReady, Status: false, Reason: "NetworkPluginNotReady", Message: "cni config uninitialized"},
		}},
		Info: info,
	}
	for _, h := range handlers {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{Name: h})
	}
	return resp
}

// TestStatusDecodes checks what Status takes from a CRI server's answer:
// conditions by type, the named handlers (containerd 2.x also lists its
// default one under ""), and the runtimes of the verbose config info
// (containerd 1.7 has no handlers).
func TestStatusDecodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fake := &fakeCRI{resp: readyResponse([]string{"runc", "storepkg", ""}, map[string]string{
		"config": `{"containerd":{"runtimes":{"storepkg":{},"runc":{"runtimeType":"io.containerd.runc.v2"}}}}`,
		"golang": `"go1.26"`,
	})}
	st, err := Status(ctx, serveCRI(t, fake))
	if err != nil {
		t.Fatal(err)
	}
	if !fake.verbose {
		t.Error("Status did not ask for verbose status (the config info comes only then)")
	}
	if c := st.Conditions[runtimeapi.RuntimeReady]; !c.Status {
		t.Errorf("RuntimeReady: %+v", c)
	}
	want := CRICondition{Status: false, Reason: "NetworkPluginNotReady", Message: "cni config uninitialized"}
	if c := st.Conditions[runtimeapi.NetworkReady]; c != want {
		t.Errorf("NetworkReady: %+v, want %+v", c, want)
	}
	if !slices.Equal(st.Handlers, []string{"runc", "storepkg"}) {
		t.Errorf("handlers %q", st.Handlers)
	}
	if !slices.Equal(st.ConfiguredRuntimes, []string{"runc", "storepkg"}) {
		t.Errorf("configured runtimes %q", st.ConfiguredRuntimes)
	}

	// A config info that is not JSON names no runtimes; it is no error.
	fake.resp = readyResponse(nil, map[string]string{"config": "{"})
	if st, err = Status(ctx, serveCRI(t, fake)); err != nil || st.ConfiguredRuntimes != nil || st.Handlers != nil {
		t.Errorf("bad config info: %+v, %v", st, err)
	}
}

// TestCRIProbe checks the probe's verdicts against a CRI server's
// answers, and that each error names the socket.
func TestCRIProbe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	config17 := map[string]string{"config": `{"containerd":{"runtimes":{"runc":{},"storepkg":{}}}}`}
	notReady := readyResponse([]string{"storepkg"}, nil)
	notReady.Status.Conditions[0] = &runtimeapi.RuntimeCondition{Type: runtimeapi.RuntimeReady, Reason: "Starting", Message: "not yet"}
	noCondition := readyResponse([]string{"storepkg"}, nil)
	noCondition.Status.Conditions = noCondition.Status.Conditions[1:]
	for _, tc := range []struct {
		name    string
		resp    *runtimeapi.StatusResponse // nil: no CRI service on the socket
		handler string
		want    string // in the error; "": no error
	}{
		{"handler (2.x)", readyResponse([]string{"runc", "storepkg", ""}, nil), RuntimeName, ""},
		{"configured runtime (1.7)", readyResponse(nil, config17), RuntimeName, ""},
		{"runtime not ready", notReady, RuntimeName, "CRI runtime not ready: Starting not yet"},
		{"no RuntimeReady condition", noCondition, RuntimeName, "CRI runtime not ready"},
		{"handler missing (2.x)", readyResponse([]string{"runc", ""}, nil), RuntimeName, `serves runtimes runc but not "storepkg"`},
		{"runtime missing (1.7)", readyResponse(nil, config17), "nosuch", `serves runtimes runc, storepkg but not "nosuch"`},
		{"CRI plugin down", nil, RuntimeName, "answers but its CRI plugin is not running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rs runtimeapi.RuntimeServiceServer
			if tc.resp != nil {
				rs = &fakeCRI{resp: tc.resp}
			}
			socket := serveCRI(t, rs)
			err := CRIProbe(socket, tc.handler)(ctx)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("probe: %v", err)
			case tc.want == "":
			case err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), socket):
				t.Fatalf("probe: %v, want an error naming %s with %q", err, socket, tc.want)
			}
		})
	}

	// Nothing listening.
	socket := filepath.Join(t.TempDir(), "none.sock")
	if err := CRIProbe(socket, RuntimeName)(ctx); err == nil || !strings.Contains(err.Error(), "CRI status at "+socket) {
		t.Errorf("probe of a socket nobody serves: %v", err)
	}
}

// TestContainerd17DropsBuiltinRunc shows the trap install avoids on
// containerd 1.x: a config that names only our runtime loses the built-in
// runc, and the CRI plugin refuses to start.
func TestContainerd17DropsBuiltinRunc(t *testing.T) {
	bin := containerdBin(t, "1.7.35")
	dir, err := os.MkdirTemp("", "sp-cri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := startContainerd(t, bin, dir, 2, runtimeTable(2, "/opt/storepkg/bin/"+ShimBinary, DefaultNodeConfig))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		err := CRIProbe(socket, RuntimeName)(ctx)
		if err != nil && strings.Contains(err.Error(), "CRI plugin is not running") {
			return
		}
		if err == nil {
			t.Fatal("containerd 1.7 kept its built-in runc: the explicit runc table install writes may be dropped")
		}
		select {
		case <-ctx.Done():
			t.Fatalf("want the CRI plugin down, last: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startContainerd runs containerd on its own directories with a config
// of the given version plus extra TOML, and returns its socket.
func startContainerd(t *testing.T, bin, dir string, version int, extra string) string {
	t.Helper()
	socket := filepath.Join(dir, "c.sock")
	cri := criPluginV2
	if version >= 3 {
		cri = criPluginV3
	}
	cfg := fmt.Sprintf(`version = %d
root = %q
state = %q
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri"]

[grpc]
  address = %q
[ttrpc]
  address = %q

[plugins.'io.containerd.internal.v1.opt']
  path = %q
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'%s'.cni]
  conf_dir = %q
`, version, filepath.Join(dir, "root"), filepath.Join(dir, "state"), socket, socket+".ttrpc",
		filepath.Join(dir, "opt"), cri, filepath.Join(dir, "cni"))
	if version >= 3 {
		// Ignored before 2.3 (shims then use /run/containerd/s); none
		// starts here.
		cfg += fmt.Sprintf("[plugins.'io.containerd.shim.v1.manager']\n  socket_dir = %q\n", filepath.Join(dir, "s"))
	}
	cfg += "\n" + extra
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path)
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("containerd log:\n%s", logb.String())
		}
	})
	return socket
}
