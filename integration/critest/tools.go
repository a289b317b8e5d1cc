package critest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/storepkg/storepkg/internal/toolcache"
)

// Versions of the tools hack/install-deps.sh builds; keep them in step.
const (
	// ContainerdVersion is the containerd every Env runs unless
	// Options.Containerd names another, with its ctr and runc shim (which
	// every Env uses, whatever its daemon).
	ContainerdVersion = "v2.3.4"
	CrictlVersion     = "v1.34.0"
	// Containerd17Version is the containerd 1.7 of ContainerdMatrix.
	Containerd17Version = "v1.7.35"
)

// ContainerdMatrix lists the containerd daemons Options.Containerd may
// select besides ContainerdVersion: the newest patch of every minor from
// 1.7 on (hack/install-deps.sh builds only their daemons).
var ContainerdMatrix = toolcache.ContainerdMatrix

// CNIBinDirs are searched, in order, for the CNI plugins (Debian's
// containernetworking-plugins installs them in /usr/lib/cni).
var CNIBinDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// tools are the absolute paths of the programs an Env runs.
type tools struct {
	containerd, shimRunc, ctr, crictl string
	runc                              string
	cniBinDir                         string
}

// toolsDir is where hack/install-deps.sh caches the Go tools.
func toolsDir() string { return toolcache.Dir() }

// findTools looks each tool up in its install-deps.sh directory, then on
// PATH.
func findTools() (tools, error) {
	var tl tools
	var err error
	containerdDir := filepath.Join(toolsDir(), "containerd-"+ContainerdVersion)
	crictlDir := filepath.Join(toolsDir(), "crictl-"+CrictlVersion)
	for _, x := range []struct {
		dst       *string
		name, dir string
	}{
		{&tl.containerd, "containerd", containerdDir},
		{&tl.shimRunc, "containerd-shim-runc-v2", containerdDir},
		{&tl.ctr, "ctr", containerdDir},
		{&tl.crictl, "crictl", crictlDir},
		{&tl.runc, "runc", ""},
	} {
		if *x.dst, err = lookTool(x.name, x.dir); err != nil {
			return tl, err
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return tl, fmt.Errorf("ip (iproute2) not found: %w", err)
	}
	for _, dir := range CNIBinDirs {
		if isExecutable(filepath.Join(dir, "bridge")) && isExecutable(filepath.Join(dir, "host-local")) && isExecutable(filepath.Join(dir, "loopback")) {
			tl.cniBinDir = dir
			return tl, nil
		}
	}
	return tl, fmt.Errorf("CNI plugins bridge, host-local and loopback not found in %v", CNIBinDirs)
}

func lookTool(name, dir string) (string, error) {
	if dir != "" {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if dir != "" {
			return "", fmt.Errorf("%s not found in %s nor on PATH", name, dir)
		}
		return "", fmt.Errorf("%s not found on PATH", name)
	}
	return filepath.Abs(p)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
