// Command benchshim-slim is containerd's runc shim linked with what a
// storepkg shim would still need if substitution and the store's
// database ran outside the per-pod shim process: pkg/mount (the closure's
// view) and the TOML node configuration. It exists for the memory row of
// `make bench` (BenchmarkPods/memory), which runs it as a runc runtime to
// show what such a shim's memory would be; it is not a shim to deploy.
package main

import (
	"context"
	"os"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task/plugin"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/pelletier/go-toml/v2"

	"github.com/storepkg/storepkg/pkg/mount"
)

func main() {
	// Never true under containerd; it keeps the view code and the TOML
	// parser linked, as a shim using them would.
	if os.Getenv("STOREPKG_BENCHSHIM_LINK") == "never" {
		var cfg map[string]any
		_ = toml.Unmarshal([]byte(os.Args[0]), &cfg)
		_, _ = mount.AcquireView(context.Background(), "/", nil, mount.User{Name: "x"})
		_, _ = mount.Build("/", "/", nil, nil)
		_ = mount.ReleaseView("/", "k", "x")
		_, _ = mount.PruneViews(context.Background(), "/", mount.PruneOptions{})
	}
	shim.RunShim(context.Background(), manager.NewShimManager("io.containerd.runc.v2"))
}
