package critest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A test process that dies (a `go test -timeout` panic, a kill) runs no
// t.Cleanup: containerd goes with it (Pdeathsig), but shims, container
// processes, mounts and the directory stay. Each Env records its owner in
// Dir/owner; Start sweeps the Envs whose owner is gone.

const ownerFile = "owner"

// writeOwner records this process (PID and start time, against PID reuse).
func (e *Env) writeOwner() error {
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(e.Dir, ownerFile), fmt.Appendf(nil, "%d %s\n", os.Getpid(), start), 0o600)
}

// ownerAlive tells whether the process recorded in dir/owner still runs.
// A directory without the file is taken as live while it is young (it may
// be starting).
func ownerAlive(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		fi, statErr := os.Stat(dir)
		return statErr == nil && time.Since(fi.ModTime()) < time.Minute
	}
	var pid int
	var start string
	if _, err := fmt.Sscan(string(data), &pid, &start); err != nil {
		return false
	}
	now, err := procStartTime(pid)
	return err == nil && now == start
}

// procStartTime returns field 22 (starttime) of /proc/PID/stat.
func procStartTime(pid int) (string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	// The command (field 2) may hold spaces: split after its closing paren.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", fmt.Errorf("odd /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return "", fmt.Errorf("odd /proc/%d/stat", pid)
	}
	return fields[19], nil // fields[0] is field 3 (state)
}

// sweepStale removes the Envs of dead test processes: their processes,
// cgroups, mounts and directories.
func sweepStale(t testing.TB) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(shortTempDir(), "critest-*"))
	for _, dir := range dirs {
		if ownerAlive(dir) {
			continue
		}
		stale := &Env{Dir: dir, CgroupParent: "/" + filepath.Base(dir)}
		killed, _ := stale.killLeftovers(0)
		err := stale.removeCgroups()
		if err == nil {
			err = stale.unmountAll()
		}
		if bridge := staleBridge(dir); err == nil && bridge != "" {
			err = removeStaleBridge(bridge)
		}
		if err == nil {
			err = os.RemoveAll(dir)
		}
		if err != nil {
			t.Logf("critest: sweeping stale %s: %v", dir, err)
			continue
		}
		t.Logf("critest: swept stale %s (killed %d processes)", dir, len(killed))
	}
}

// staleBridge reads the bridge name from an Env's CNI config.
func staleBridge(dir string) string {
	confs, _ := filepath.Glob(filepath.Join(dir, "cni", "net.d", "*.conflist"))
	for _, p := range confs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var conf struct {
			Plugins []struct {
				Bridge string `json:"bridge"`
			} `json:"plugins"`
		}
		if json.Unmarshal(data, &conf) == nil && len(conf.Plugins) > 0 && strings.HasPrefix(conf.Plugins[0].Bridge, "crt") {
			return conf.Plugins[0].Bridge
		}
	}
	return ""
}
