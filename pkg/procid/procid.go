// Package procid names a running process so that another process can
// tell later whether it still runs: "is this shim alive".
//
// A PID alone does not say it: the kernel reuses PIDs, and a PID means
// nothing in another PID namespace. An ID adds the process's start time
// and its PID namespace. The shim writes its ID into its GC owner records
// (pkg/gcowner) and its fetch records (pkg/fetchrecord); the collectors
// and the node agent ask Alive.
package procid

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ID identifies a process. Its JSON form is part of the owner and fetch
// records on a node: keep it compatible.
type ID struct {
	PID int `json:"pid"`
	// PIDNamespace is the process's /proc/self/ns/pid link (e.g.
	// "pid:[4026531836]"); a reader in another PID namespace cannot
	// check PID.
	PIDNamespace string `json:"pidNamespace,omitempty"`
	// StartTicks is the process's start time (field 22 of /proc/PID/stat),
	// which tells it from a later process that reuses its PID.
	StartTicks uint64 `json:"startTicks,omitempty"`
}

// Self identifies the calling process.
func Self() ID {
	id := ID{PID: os.Getpid()}
	id.PIDNamespace, _ = os.Readlink("/proc/self/ns/pid")
	id.StartTicks, _ = startTicks("self")
	return id
}

// Alive reports whether the process still runs, as far as the caller can
// tell: known is false when the process is in another PID namespace (or
// the ID is incomplete), where its PID means nothing to the caller.
func (id ID) Alive() (alive, known bool) {
	self, err := os.Readlink("/proc/self/ns/pid")
	if err != nil || id.PID <= 0 || id.PIDNamespace == "" || id.PIDNamespace != self {
		return false, false
	}
	state, ticks, err := stat(strconv.Itoa(id.PID))
	if err != nil {
		return false, true // no such process
	}
	if state == "Z" || state == "X" {
		// Exited, not yet reaped (a killed shim waits for init): it will
		// never remove what it holds.
		return false, true
	}
	return id.StartTicks == 0 || ticks == id.StartTicks, true
}

// startTicks reads field 22 (starttime) of /proc/<pid>/stat.
func startTicks(pid string) (uint64, error) {
	_, ticks, err := stat(pid)
	return ticks, err
}

// stat reads fields 3 (state) and 22 (starttime) of /proc/<pid>/stat.
func stat(pid string) (state string, ticks uint64, err error) {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "", 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start after the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, fmt.Errorf("/proc/%s/stat: no command field", pid)
	}
	fields := strings.Fields(s[i+1:])
	const starttime = 22 - 3 // fields[0] is field 3
	if len(fields) <= starttime {
		return "", 0, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(fields)+2)
	}
	ticks, err = strconv.ParseUint(fields[starttime], 10, 64)
	return fields[0], ticks, err
}
