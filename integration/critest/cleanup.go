package critest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/pkg/mount"

	"golang.org/x/sys/unix"
)

// cleanup undoes Start: pods, containerd, leftover shims and container
// processes, mounts, cgroups, the bridge and ip_forward, the directory.
// It keeps going past errors and reports them at the end.
func (e *Env) cleanup(t testing.TB) {
	t.Helper()
	started := time.Now()
	if t.Failed() || os.Getenv("STOREPKG_CRITEST_LOG") == "1" {
		e.dumpLog(t)
	}
	var errs []error
	note := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	if e.running() {
		note("remove pods", e.removePods())
	}
	note("stop containerd", e.stopContainerd(10*time.Second))
	if leftover, err := e.killLeftovers(3 * time.Second); err != nil {
		note("kill leftover processes", err)
	} else if len(leftover) > 0 {
		t.Logf("critest: killed leftover processes: %s", strings.Join(leftover, "; "))
	}
	note("remove shim sockets", e.removeShimSockets())
	note("remove cgroups", e.removeCgroups())
	note("unmount", e.unmountAll())
	note("release network", e.netLock.release())
	note("remove "+e.Dir, os.RemoveAll(e.Dir))
	if len(errs) > 0 {
		e.dumpLog(t)
		t.Errorf("critest: cleanup: %v", errors.Join(errs...))
		return
	}
	t.Logf("critest: cleaned up in %v", time.Since(started).Round(time.Millisecond))
}

func (e *Env) running() bool {
	if e.cmd == nil {
		return false
	}
	select {
	case <-e.exited:
		return false
	default:
		return true
	}
}

// removePods stops and removes every pod, and with them their containers.
func (e *Env) removePods() error {
	out, err := e.CrictlErr("pods", "--quiet")
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range strings.Fields(out) {
		e.notePod(id)
		if _, err := e.CrictlErr("stopp", id); err != nil {
			errs = append(errs, err)
		}
		if _, err := e.CrictlErr("rmp", "--force", id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopContainerd sends SIGTERM, and SIGKILL after timeout.
func (e *Env) stopContainerd(timeout time.Duration) error {
	if !e.running() {
		return nil
	}
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-e.exited:
		return nil
	case <-time.After(timeout):
	}
	_ = e.cmd.Process.Kill()
	<-e.exited
	return fmt.Errorf("containerd (pid %d) did not stop within %v of SIGTERM: killed", e.cmd.Process.Pid, timeout)
}

// killLeftovers waits up to grace for processes that name this Env's
// directory on their command line (shims: -address <Socket>; runc: --root)
// to exit, then kills them by PID. It returns what it had to kill.
func (e *Env) killLeftovers(grace time.Duration) ([]string, error) {
	deadline := time.Now().Add(grace)
	for {
		procs := e.processes()
		if len(procs) == 0 {
			return nil, nil
		}
		if time.Now().After(deadline) {
			var killed []string
			for pid, cmdline := range procs {
				if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
					killed = append(killed, fmt.Sprintf("%d %s", pid, cmdline))
				}
			}
			sort.Strings(killed)
			return killed, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processes returns the live processes (not zombies) whose command line
// mentions this Env's directory, by PID.
func (e *Env) processes() map[int]string {
	entries, _ := os.ReadDir("/proc")
	procs := map[int]string{}
	self := os.Getpid()
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a zombie (empty cmdline)
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		for _, arg := range args {
			if arg == e.Dir || strings.Contains(arg, e.Dir+"/") {
				procs[pid] = strings.Join(args, " ")
				break
			}
		}
	}
	return procs
}

// cgroupDirs returns this Env's cgroup parent in every hierarchy mounted
// under /sys/fs/cgroup (v1 controllers, the v2 unified mount, or v2 alone).
func (e *Env) cgroupDirs() []string {
	var dirs []string
	candidates, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", e.CgroupParent))
	candidates = append(candidates, filepath.Join("/sys/fs/cgroup", e.CgroupParent))
	for _, d := range candidates {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// removeCgroups kills whatever still runs in this Env's cgroups and removes
// them, deepest first.
func (e *Env) removeCgroups() error {
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ {
		var all []string
		for _, root := range e.cgroupDirs() {
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					all = append(all, p)
				}
				return nil
			})
		}
		if len(all) == 0 {
			return nil
		}
		sort.Slice(all, func(i, j int) bool { return depth(all[i]) > depth(all[j]) })
		lastErr = nil
		for _, dir := range all {
			killCgroup(dir)
			if err := unix.Rmdir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				lastErr = fmt.Errorf("rmdir %s: %w", dir, err)
			}
		}
		if lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return lastErr
}

// killCgroup SIGKILLs every process of one cgroup directory.
func killCgroup(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Mounts returns the mount points under Dir, deepest first, except the
// Env's own tmpfs at StateDir. With no pod left it should be empty.
func (e *Env) Mounts() []string {
	all, _ := mountsUnder(e.Dir)
	var mounts []string
	for _, m := range all {
		if m != e.StateDir {
			mounts = append(mounts, m)
		}
	}
	return mounts
}

// unmountAll unmounts everything under Dir, deepest first; lazily when a
// mount is busy.
func (e *Env) unmountAll() error {
	for pass := 0; pass < 10; pass++ {
		mounts, err := mountsUnder(e.Dir)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return nil
		}
		for _, m := range mounts {
			if err := unix.Unmount(m, 0); err != nil {
				_ = unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	}
	mounts, _ := mountsUnder(e.Dir)
	if len(mounts) > 0 {
		return fmt.Errorf("still mounted: %v", mounts)
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	mounts, err := mount.MountsUnder(dir)
	sort.SliceStable(mounts, func(i, j int) bool { return depth(mounts[i]) > depth(mounts[j]) })
	return mounts, err
}

func depth(p string) int { return strings.Count(filepath.Clean(p), "/") }

// run runs a command, returning its output in the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
