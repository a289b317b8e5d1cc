package shim

import (
	"fmt"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
)

// A Nix system ("x86_64-linux") names what a store path was built for:
// pods of a mixed cluster name paths per system, and each node takes its
// own (annotations.go). Only Linux systems: nodes run Linux.
var goarchSystems = map[string]string{
	"amd64":    "x86_64-linux",
	"arm64":    "aarch64-linux",
	"386":      "i686-linux",
	"arm":      "armv7l-linux", // GOARM=7, Go's default; armv6l nodes set System
	"riscv64":  "riscv64-linux",
	"ppc64le":  "powerpc64le-linux",
	"ppc64":    "powerpc64-linux",
	"s390x":    "s390x-linux",
	"loong64":  "loongarch64-linux",
	"mips64le": "mips64el-linux",
	"mips64":   "mips64-linux",
	"mipsle":   "mipsel-linux",
	"mips":     "mips-linux",
}

// knownSystems are the systems an annotation or the System option may
// name: nixpkgs' Linux systems. A closed list, so a typo ("arm64-linux",
// "x86-64-linux") is refused rather than silently matching no node.
var knownSystems = func() []string {
	s := []string{"armv5tel-linux", "armv6l-linux", "riscv32-linux"}
	for _, v := range goarchSystems {
		s = append(s, v)
	}
	slices.Sort(s)
	return s
}()

// anySystem, as the node's system, takes the paths of every system: for
// callers that only ask whether a container runs from store paths.
const anySystem = "*"

// defaultSystem is the Nix system of the machine the shim runs on, from
// the architecture it was built for; "" if Go's is not in the table.
func defaultSystem() string { return goarchSystems[runtime.GOARCH] }

func isKnownSystem(s string) bool {
	_, ok := slices.BinarySearch(knownSystems, s)
	return ok
}

// checkSystem refuses a System option that is not a known Nix system.
func checkSystem(s string) error {
	if s == "" || isKnownSystem(s) {
		return nil
	}
	return fmt.Errorf("storepkg config System %q: not a Nix Linux system (known: %s): %w",
		s, strings.Join(knownSystems, ", "), errdefs.ErrInvalidArgument)
}
