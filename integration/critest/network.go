package critest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Each Env gets its own bridge and /24 in subnetBase, so Envs of tests
// running in parallel (several packages under `go test ./...`) never share
// one. A subnet is claimed by holding an flock on its file in lockDir for
// the Env's lifetime; the kernel drops the lock if the test process dies.
const (
	subnetBase = "10.88.%d.0/24"
	lockDir    = "/run/storepkg-critest"
	// forwardFile keeps net.ipv4.ip_forward as it was before the first of
	// the live Envs: the last one to stop restores it.
	forwardFile = "ip_forward.orig"
	ipForward   = "/proc/sys/net/ipv4/ip_forward"
)

// netLock is a claimed subnet.
type netLock struct {
	network Network
	file    *os.File
}

// lockNetwork claims a free subnet, and records ip_forward if this is the
// only live Env.
func lockNetwork() (*netLock, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockGlobal()
	if err != nil {
		return nil, err
	}
	defer unlock()

	if _, err := os.Stat(filepath.Join(lockDir, forwardFile)); errors.Is(err, os.ErrNotExist) {
		value, err := os.ReadFile(ipForward)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(lockDir, forwardFile), value, 0o644); err != nil {
			return nil, err
		}
	}

	used := hostNetworks()
	start := os.Getpid() % 200
	for i := range 200 {
		n := 10 + (start+i)%200
		_, subnet, _ := net.ParseCIDR(fmt.Sprintf(subnetBase, n))
		if overlaps(subnet, used) {
			continue
		}
		bridge := fmt.Sprintf("crt%d", n)
		f, ok, err := tryLock(bridgeLock(bridge))
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		gw := make(net.IP, len(subnet.IP))
		copy(gw, subnet.IP)
		gw[len(gw)-1] = 1
		return &netLock{
			network: Network{Name: fmt.Sprintf("critest%d", n), Bridge: bridge, Subnet: subnet, Gateway: gw},
			file:    f,
		}, nil
	}
	return nil, errors.New("no free subnet for the CNI bridge")
}

// release removes the bridge, restores ip_forward if no other Env lives,
// and frees the subnet.
func (l *netLock) release() error {
	if l == nil {
		return nil
	}
	var errs []error
	if _, err := os.Stat("/sys/class/net/" + l.network.Bridge); err == nil {
		if err := run("ip", "link", "delete", l.network.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	unlock, err := lockGlobal()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer unlock()
	os.Remove(l.file.Name()) // under the global lock: nobody is opening it
	l.file.Close()           // drops our flock
	if !otherEnvsLive() {
		orig := filepath.Join(lockDir, forwardFile)
		if value, err := os.ReadFile(orig); err == nil {
			if err := os.WriteFile(ipForward, value, 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", ipForward, err))
			}
			os.Remove(orig)
		}
	}
	return errors.Join(errs...)
}

// bridgeLock is the lock file of a bridge (and so of its subnet).
func bridgeLock(bridge string) string { return filepath.Join(lockDir, bridge+".lock") }

// tryLock takes the flock of path if it is free.
func tryLock(path string) (f *os.File, ok bool, err error) {
	f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, false, nil
	}
	return f, true, nil
}

// removeStaleBridge deletes the bridge of a dead Env unless a live Env
// has claimed it since.
func removeStaleBridge(bridge string) error {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return err
	}
	unlock, err := lockGlobal()
	if err != nil {
		return err
	}
	defer unlock()
	f, ok, err := tryLock(bridgeLock(bridge))
	if err != nil || !ok {
		return err
	}
	defer f.Close()
	defer os.Remove(f.Name())
	if _, err := os.Stat("/sys/class/net/" + bridge); err != nil {
		return nil
	}
	return run("ip", "link", "delete", bridge)
}

// lockGlobal serializes the bookkeeping of lockNetwork and release.
func lockGlobal() (func(), error) {
	f, err := os.OpenFile(filepath.Join(lockDir, "global.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// otherEnvsLive tells whether any subnet lock is still held.
func otherEnvsLive() bool {
	locks, _ := filepath.Glob(filepath.Join(lockDir, "crt*.lock"))
	for _, p := range locks {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		f.Close()
		if err != nil {
			return true
		}
	}
	return false
}

// hostNetworks lists the networks of this machine's addresses.
func hostNetworks() []*net.IPNet {
	addrs, _ := net.InterfaceAddrs()
	var nets []*net.IPNet
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			nets = append(nets, n)
		}
	}
	return nets
}

func overlaps(n *net.IPNet, others []*net.IPNet) bool {
	for _, o := range others {
		if n.Contains(o.IP) || o.Contains(n.IP) {
			return true
		}
	}
	return false
}
