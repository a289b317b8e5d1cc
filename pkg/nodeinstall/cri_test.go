package nodeinstall

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCRIProbeRealContainerd starts real containerd with our runtime
// table (as install writes it) and asks its CRI plugin, as the installer
// does before labelling the node.
func TestCRIProbeRealContainerd(t *testing.T) {
	for _, v := range []string{"2.3.4", "1.7.35"} {
		t.Run(v, func(t *testing.T) {
			bin := containerdBin(t, v)
			version := 3
			if strings.HasPrefix(v, "1.") {
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
