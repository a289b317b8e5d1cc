// Command containerd-shim-storepkg-v1 is the containerd shim for runtime
// type io.containerd.storepkg.v1: runc's shim, with containers whose root
// is a closure of Nix store paths.
package main

import (
	"context"

	containerdshim "github.com/containerd/containerd/v2/pkg/shim"

	"github.com/storepkg/storepkg/pkg/shim"
)

func main() {
	shim.Register()
	containerdshim.RunShim(context.Background(), shim.NewManager("io.containerd.storepkg.v1"))
}
