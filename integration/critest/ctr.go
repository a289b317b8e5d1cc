package critest

import (
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

// CtrErr runs the ctr of ContainerdVersion against the Env's containerd
// in the CRI namespace, with stdin (nil: none), and returns its combined
// output; the error includes it. For what tests must do as an admin does
// (kind imports images with `ctr images import ... -`).
func (e *Env) CtrErr(stdin io.Reader, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(e.tools.ctr, append([]string{"--address", e.Socket, "--namespace", Namespace}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}
