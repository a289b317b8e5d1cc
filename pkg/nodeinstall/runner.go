package nodeinstall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Runner runs a command on the host and returns its combined output.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// HostRunner runs commands on the host.
//
// With Nsenter (the DaemonSet case: host PID namespace, host root mounted
// at Root) the command runs through `nsenter --target 1` in PID 1's mount,
// UTS, IPC, network and PID namespaces, so `systemctl` talks to the host's
// systemd and `containerd` is the host's binary. nsenter comes from the
// installer image when it has one, else from the host (run chrooted into
// Root; entering PID 1's mount namespace then moves it to the host's root).
//
// Without Nsenter the command runs chrooted into Root (or directly when
// Root is "/"): the tests use that to run a real containerd binary placed
// in a temporary host root.
type HostRunner struct {
	Root    string
	Nsenter bool
}

// Run implements Runner.
func (r HostRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command")
	}
	root := r.Root
	if root == "" {
		root = "/"
	}
	chroot := ""
	if root != "/" {
		chroot = root
	}
	if r.Nsenter {
		ns := []string{"--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"}
		if p, err := exec.LookPath("nsenter"); err == nil {
			argv = append(append([]string{p}, ns...), argv...)
			chroot = ""
		} else {
			p, err := lookPathIn(root, "nsenter")
			if err != nil {
				return nil, fmt.Errorf("nsenter: not in this image and not on the host: %w", err)
			}
			argv = append(append([]string{p}, ns...), argv...)
		}
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		p, err := lookPathIn(root, path)
		if err != nil {
			return nil, err
		}
		path = p
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Path = path
	cmd.Env = []string{"PATH=" + hostPATH, "LANG=C"}
	if chroot != "" {
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: chroot}
		cmd.Dir = "/"
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

const hostPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// lookPathIn finds a command in the host's usual PATH under root and
// returns its path as seen from root.
func lookPathIn(root, name string) (string, error) {
	for _, dir := range filepath.SplitList(hostPATH) {
		p := filepath.Join(dir, name)
		if fi, err := newHostFS(root).stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s under %s", name, hostPATH, root)
}

var versionRE = regexp.MustCompile(`(?:^|\s)v?(\d+)\.(\d+)\.(\d+)\S*`)

// ParseContainerdVersion reads `containerd --version` output ("containerd
// containerd.io 1.7.22 7f7fdf5…", "containerd github.com/containerd/containerd/v2
// v2.1.4 …") and returns the version and its major number.
func ParseContainerdVersion(out string) (version string, major int, err error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return "", 0, fmt.Errorf("no version in %q", strings.TrimSpace(out))
	}
	major, _ = strconv.Atoi(m[1])
	return strings.TrimSpace(m[0]), major, nil
}

// Restart modes.
const (
	RestartAuto    = "auto"    // by layout: systemd for containerd, k3s or rke2 for theirs
	RestartSystemd = "systemd" // systemctl restart containerd
	RestartK3s     = "k3s"     // systemctl restart k3s (or k3s-agent, whichever runs)
	RestartRKE2    = "rke2"    // systemctl restart rke2-server (or rke2-agent)
	RestartNone    = "none"    // the operator restarts containerd
	restartCommand = "command:"
)

// ValidRestart checks a --restart value.
func ValidRestart(mode string) error {
	switch mode {
	case "", RestartAuto, RestartSystemd, RestartK3s, RestartRKE2, RestartNone:
		return nil
	}
	if strings.HasPrefix(mode, restartCommand) && strings.TrimSpace(strings.TrimPrefix(mode, restartCommand)) != "" {
		return nil
	}
	return fmt.Errorf("restart mode %q: want auto, systemd, k3s, rke2, none or command:<shell command>", mode)
}

// restartArgv returns the host command that restarts containerd, or nil
// for mode none.
func restartArgv(ctx context.Context, mode string, flavor Flavor, run Runner) ([]string, error) {
	if err := ValidRestart(mode); err != nil {
		return nil, err
	}
	if mode == "" || mode == RestartAuto {
		switch flavor {
		case FlavorK3s:
			mode = RestartK3s
		case FlavorRKE2:
			mode = RestartRKE2
		default:
			mode = RestartSystemd
		}
	}
	switch mode {
	case RestartNone:
		return nil, nil
	case RestartSystemd:
		return []string{"systemctl", "restart", "containerd"}, nil
	case RestartK3s:
		return []string{"systemctl", "restart", activeUnit(ctx, run, "k3s", "k3s-agent")}, nil
	case RestartRKE2:
		return []string{"systemctl", "restart", activeUnit(ctx, run, "rke2-server", "rke2-agent")}, nil
	}
	return []string{"sh", "-c", strings.TrimPrefix(mode, restartCommand)}, nil
}

// activeUnit returns the first of units systemd reports active, else the
// first one (a server node runs k3s, an agent k3s-agent).
func activeUnit(ctx context.Context, run Runner, units ...string) string {
	if run != nil {
		for _, u := range units {
			if _, err := run.Run(ctx, "systemctl", "is-active", "--quiet", u); err == nil {
				return u
			}
		}
	}
	return units[0]
}
