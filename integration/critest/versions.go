package critest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/internal/toolcache"
)

// generation is what an Env must know of the containerd it runs: where
// the daemon is and how it configures and starts shims.
type generation struct {
	version string
	bin     string // "" for ContainerdVersion: the tools' containerd
	// configVersion is 2 for containerd 1.x (CRI is the one plugin
	// io.containerd.grpc.v1.cri) and 3 for 2.x (CRI split in
	// io.containerd.cri.v1.images and .runtime).
	configVersion int
	// bootstrap: containerd starts shims with bootstrap.v1 parameters on
	// stdin, reads a protobuf answer and has the shim manager's socket_dir
	// (2.3 on). Before, it writes the runtime options as an Any, reads
	// JSON, and every shim puts its socket in /run/containerd/s. The runc
	// shim built beside ContainerdVersion answers in protobuf, which those
	// cannot read: there, the storepkg shim is the only runtime (it runs
	// containers without store paths unchanged).
	bootstrap bool
	// cniBinDirs: the CNI plugin dirs are the list bin_dirs (2.1 on), not
	// the string bin_dir (2.0; 1.7 has only bin_dir too).
	cniBinDirs bool
}

// generationOf describes the containerd that Options.Containerd selects.
func generationOf(version string) (generation, error) {
	if version == "" {
		version = ContainerdVersion
	}
	g := generation{version: version}
	switch {
	case version == ContainerdVersion:
	case slices.Contains(ContainerdMatrix, version):
		g.bin = toolcache.Containerd(version)
	default:
		return g, fmt.Errorf("Containerd %q: want %s or one of %v", version, ContainerdVersion, ContainerdMatrix)
	}
	major, minor, err := toolcache.Minor(version)
	if err != nil {
		return g, err
	}
	g.configVersion = 3
	if major < 2 {
		g.configVersion = 2
	}
	g.bootstrap = major > 2 || major == 2 && minor >= 3
	g.cniBinDirs = major > 2 || major == 2 && minor >= 1
	return g, nil
}

// RequireContainerd is Require for an Env with Options.Containerd
// version: it also needs that containerd built by hack/install-deps.sh
// (the test skips without it only outside CI).
func RequireContainerd(t testing.TB, version string) {
	t.Helper()
	Require(t)
	g, err := generationOf(version)
	if err != nil {
		t.Fatalf("critest: %v", err)
	}
	if g.bin != "" && !isExecutable(g.bin) {
		testenv.Unavailable(t, "critest: containerd %s not built at %s (hack/install-deps.sh builds it)", version, g.bin)
	}
}

// Require17 is RequireContainerd for Containerd17Version.
func Require17(t testing.TB) {
	t.Helper()
	RequireContainerd(t, Containerd17Version)
}
