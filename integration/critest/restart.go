package critest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Faults of the node itself, for the chaos scenarios: containerd killed
// and started again, and a reboot.

// ContainerdPID is the PID of the Env's running containerd, 0 if none.
func (e *Env) ContainerdPID() int {
	if !e.running() {
		return 0
	}
	return e.cmd.Process.Pid
}

// KillContainerd SIGKILLs containerd and waits for it to exit. Its shims,
// and the pods they run, live on, as on a node whose containerd crashed.
func (e *Env) KillContainerd(t testing.TB) {
	t.Helper()
	if !e.running() {
		t.Fatal("critest: containerd is not running")
	}
	if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("critest: kill containerd: %v", err)
	}
	<-e.exited
}

// RestartContainerd starts containerd again with the configuration of
// Start (same root, state and sockets) and waits until CRI is ready. The
// images are already in its root.
func (e *Env) RestartContainerd(t testing.TB) {
	t.Helper()
	if e.running() {
		t.Fatal("critest: containerd is still running")
	}
	started := time.Now()
	// A killed containerd leaves its sockets; it removes them itself at
	// start, but a stale one must not answer waitSocket first.
	for _, s := range []string{e.Socket, e.TTRPCSocket} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("critest: %v", err)
		}
	}
	if err := e.startContainerd(e.opts); err != nil {
		t.Fatalf("critest: %v", err)
	}
	if err := e.waitSocket(15 * time.Second); err != nil {
		e.dumpLog(t)
		t.Fatalf("critest: %v", err)
	}
	if err := e.waitCRIReady(30 * time.Second); err != nil {
		e.dumpLog(t)
		t.Fatalf("critest: %v", err)
	}
	t.Logf("critest: containerd restarted in %v", time.Since(started).Round(time.Millisecond))
}

// Reboot does to the Env what a power cut and boot do to a node: every
// process of the Env (containerd, shims, runc, fetch children, the
// containers in its cgroups) is SIGKILLed, its mounts are gone, and what
// lives on tmpfs on a node (/run: containerd's state dir, the runc root,
// the shims' sockets, the fetch records in StatusDir) starts empty. What
// lives on disk stays: containerd's root, the pod logs, the store (even
// under StoreRoot when it is a directory of this Env). Then containerd
// starts again. extraRun are more directories to empty, as /run would be
// (e.g. a StatusDir outside the Env).
func (e *Env) Reboot(t testing.TB, extraRun ...string) {
	t.Helper()
	started := time.Now()
	if e.running() {
		e.KillContainerd(t)
	}
	var errs []error
	var killed []int
	for pid := range e.processes() {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
		}
		killed = append(killed, pid)
	}
	if _, err := e.killLeftovers(2 * time.Second); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, e.removeCgroups())
	errs = append(errs, e.unmountAll())
	// After a reboot no process of before exists, not even as a zombie
	// its parent (init, for the daemonized shims) has yet to reap.
	for _, pid := range killed {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("process %d not reaped 30s after SIGKILL", pid))
				break
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("critest: reboot: %v", err)
	}
	// unmountAll took the state dir's tmpfs too: a fresh one, empty.
	if err := os.RemoveAll(e.StateDir); err != nil {
		t.Fatalf("critest: reboot: %v", err)
	}
	if err := os.Mkdir(e.StateDir, 0o700); err != nil {
		t.Fatalf("critest: reboot: %v", err)
	}
	if err := unix.Mount("tmpfs", e.StateDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		t.Fatalf("critest: reboot: tmpfs for the state dir: %v", err)
	}
	for _, d := range append([]string{e.RuncRoot, e.ShimSocketDir, e.StatusDir, filepath.Join(e.Dir, "tmp")}, extraRun...) {
		if err := emptyDir(d); err != nil {
			t.Fatalf("critest: reboot: %v", err)
		}
	}
	t.Logf("critest: reboot: everything killed and /run emptied in %v", time.Since(started).Round(time.Millisecond))
	e.RestartContainerd(t)
}

// emptyDir removes what dir holds, keeping dir (if it exists).
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, ent := range entries {
		if err := os.RemoveAll(filepath.Join(dir, ent.Name())); err != nil {
			return err
		}
	}
	return nil
}

// Processes returns the live processes of this Env other than containerd
// itself: those whose command line names the Env's directory (shims,
// runc, fetch children of a store inside it) and those in the Env's
// cgroups (containers), by PID with their command lines. With no pod
// left it should be empty.
func (e *Env) Processes() map[int]string {
	procs := e.processes()
	for _, root := range e.cgroupDirs() {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
					procs[pid] = strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ") + " (in " + p + ")"
				}
			}
			return nil
		})
	}
	if pid := e.ContainerdPID(); pid != 0 {
		delete(procs, pid)
	}
	return procs
}
