package critest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ShimPID returns the PID of the shim serving a pod: the parent of the
// pod's sandbox process, whose PID runc wrote to init.pid in the sandbox's
// bundle in containerd's state dir (the shim is the subreaper of every
// process of its pod). It checks that the parent is a shim of this Env
// (its command line names the Env's containerd socket).
func (e *Env) ShimPID(podID string) (int, error) {
	bundle := filepath.Join(e.StateDir, "io.containerd.runtime.v2.task", Namespace, podID)
	data, err := os.ReadFile(filepath.Join(bundle, "init.pid"))
	if err != nil {
		return 0, fmt.Errorf("pod %s: sandbox pid: %w", podID, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pod %s: init.pid %q: %w", podID, data, err)
	}
	ppid, err := parentPID(pid)
	if err != nil {
		return 0, fmt.Errorf("pod %s: parent of sandbox process %d: %w", podID, pid, err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ppid))
	if err != nil {
		return 0, fmt.Errorf("pod %s: shim %d: %w", podID, ppid, err)
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for i, a := range args {
		if a == "-address" && i+1 < len(args) && args[i+1] == e.Socket {
			return ppid, nil
		}
	}
	return 0, fmt.Errorf("pod %s: parent %d of the sandbox process is no shim of this containerd: %q", podID, ppid, args)
}

// parentPID reads field 4 (ppid) of /proc/PID/stat.
func parentPID(pid int) (int, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("odd /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return 0, fmt.Errorf("odd /proc/%d/stat", pid)
	}
	return strconv.Atoi(fields[1])
}
