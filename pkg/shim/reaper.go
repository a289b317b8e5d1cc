package shim

import (
	"fmt"
	"os/exec"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
)

// startReaped starts a child of the shim through containerd's reaper,
// which reaps every child of the shim: os/exec's own wait would find its
// exit status taken.
func startReaped(cmd *exec.Cmd) (func() error, error) {
	ec, err := reaper.Default.Start(cmd)
	if err != nil {
		return nil, err
	}
	return func() error {
		status, err := reaper.Default.Wait(cmd, ec)
		if err != nil {
			return err
		}
		if status != 0 {
			return fmt.Errorf("exit status %d", status)
		}
		return nil
	}, nil
}
