// Package critest runs a real containerd with its CRI plugin for
// integration tests: a private containerd (own root, state, sockets, shim
// socket dir and runc root under one temporary directory), Debian's runc and
// CNI plugins on a private bridge, the test images imported, and crictl to
// drive it. Two runtime handlers are configured: "runc" (containerd's runc
// shim) and "storepkg" (our shim, runtime_type io.containerd.storepkg.v1);
// under a containerd before 2.3 (Options.Containerd) only "storepkg".
//
//	func TestSomething(t *testing.T) {
//		critest.Require(t)
//		env := critest.Start(t, critest.Options{
//			ShimPath:        critest.BuildShim(t),
//			StorepkgOptions: map[string]any{"Substituters": []string{cacheURL}, "TrustedPublicKeys": keys},
//		})
//		pod := env.PodConfig("web", "default", map[string]string{"storepkg.dev/paths": p})
//		podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
//		id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{p + "/bin/app"}), pod)
//		...
//	}
//
// Everything Start creates is removed by a t.Cleanup: pods, containerd and
// its shims (by PID, never by name), mounts, cgroups, the bridge, and the
// directory; net.ipv4.ip_forward is restored.
//
// The tools come from hack/install-deps.sh: containerd, ctr,
// containerd-shim-runc-v2 and crictl under $STOREPKG_TOOLS (or on PATH),
// runc, CNI plugins, iproute2 and busybox-static from Debian.
package critest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/integration/testimages"
	"github.com/storepkg/storepkg/internal/testenv"
)

// Runtime handlers configured in containerd's CRI plugin.
const (
	HandlerRunc     = "runc"
	HandlerStorepkg = "storepkg"
	// StorepkgRuntimeType is the runtime_type of the storepkg handler; containerd
	// maps it to the binary containerd-shim-storepkg-v1.
	StorepkgRuntimeType = "io.containerd.storepkg.v1"
	// StorepkgShimBinary is the shim binary containerd looks for on PATH when
	// Options.ShimPath is empty.
	StorepkgShimBinary = "containerd-shim-storepkg-v1"
)

// Images every Env has imported.
const (
	PauseImage   = testimages.PauseRef   // the CRI sandbox image; also a storepkg placeholder image
	BusyboxImage = testimages.BusyboxRef // a plain image for mixed pods
)

// Namespace is the containerd namespace of the CRI plugin.
const Namespace = "k8s.io"

// Options configure an Env.
type Options struct {
	// Containerd selects the containerd to run: "" or ContainerdVersion,
	// or one of ContainerdMatrix. 2.x gets configuration version 3, 1.7
	// version 2 (plugin io.containerd.grpc.v1.cri). Before 2.3 only the
	// storepkg handler is configured, and it is also the default runtime:
	// the runc shim built beside ContainerdVersion answers `start` in a
	// form they refuse. ShimEnv is not supported under 1.7 (it has no
	// setting for it).
	Containerd string
	// ShimPath is the absolute path of containerd-shim-storepkg-v1, set as the
	// storepkg runtime's runtime_path. Empty: containerd finds the shim on
	// its PATH (see ExtraPath).
	ShimPath string
	// StorepkgOptions is the options table of the storepkg runtime
	// (Substituters, TrustedPublicKeys, StoreRoot, BinaryName, Root,
	// SystemdCgroup, ...). Keys left out default to: BinaryName the
	// machine's runc, Root Env.RuncRoot, SystemdCgroup false, StoreRoot
	// Env.StoreRoot, StatusDir Env.StatusDir, FetchSlotsDir
	// Env.FetchSlotsDir, Substituters [NoSubstituter], PeersFile ""
	// (no peers). (Options.Config
	// can remove them.)
	StorepkgOptions map[string]any
	// StorepkgOptionsTOML is the same table as TOML text; keys of
	// StorepkgOptions override it.
	StorepkgOptionsTOML string
	// ExtraPath holds directories put first on containerd's (and so the
	// shims') PATH.
	ExtraPath []string
	// ShimEnv is added to the environment of every shim
	// ([plugins.'io.containerd.shim.v1.manager'] env), e.g. "KEY=value".
	ShimEnv []string
	// Images are more image tarballs to import into the k8s.io namespace.
	Images []string
	// Debug sets containerd's log level to debug (also STOREPKG_CRITEST_DEBUG=1).
	Debug bool
	// CrictlTimeout bounds each crictl request; default 60s.
	CrictlTimeout time.Duration
	// Config, if set, may change the containerd configuration before it is
	// written (keys as in containerd's config version 3; version 2 under
	// containerd 1.7).
	Config func(config map[string]any)
	// RegistryHosts maps registry hosts of image references ("127.0.0.1:5000")
	// to the URL CRI pulls them from over plain HTTP ("http://127.0.0.1:5000"):
	// a hosts.toml per host under Dir/certs.d, CRI's registry config_path.
	// Empty: no registry configuration (CRI pulls nothing in tests).
	RegistryHosts map[string]string
}

// Env is a running containerd with CRI.
type Env struct {
	// Dir holds everything of this Env; it is removed at cleanup.
	Dir string
	// Root and StateDir are containerd's root and state directories.
	Root, StateDir string
	// Socket is containerd's gRPC socket (the CRI endpoint), TTRPCSocket
	// its ttrpc socket.
	Socket, TTRPCSocket string
	// ShimSocketDir is where the shims put their sockets (containerd 2.3
	// on; before, /run/containerd/s).
	ShimSocketDir string
	// RuncRoot is runc's --root for both handlers (unless the storepkg
	// options set Root).
	RuncRoot string
	// StoreRoot is the storepkg runtime's default StoreRoot: an empty
	// directory (the store would be StoreRoot/nix/store).
	StoreRoot string
	// StatusDir is the storepkg runtime's default StatusDir, where shims
	// write fetch status records (pkg/fetchrecord) instead of the node's
	// /run/storepkg/fetches.
	StatusDir string
	// FetchSlotsDir is the storepkg runtime's default FetchSlotsDir, the
	// node's fetch slots (pkg/fetchslot), instead of the node's
	// /run/storepkg/fetch-slots shared with every other test.
	FetchSlotsDir string
	// ConfigPath is containerd's config file, LogPath its log.
	ConfigPath, LogPath string
	// PodLogDir is where PodConfig puts the pods' log directories.
	PodLogDir string
	// CgroupParent is the cgroup parent PodConfig gives every pod (cgroupfs).
	CgroupParent string
	// Network is the CNI bridge network.
	Network Network

	tools         tools
	crictlConfig  string
	crictlTimeout time.Duration
	cmd           *exec.Cmd
	exited        chan struct{}
	netLock       *netLock
	gen           generation

	mu     sync.Mutex
	podIDs map[string]bool // every pod run through RunPodSandbox

	opts Options // what Start was given, for RestartContainerd
}

// Network is the private CNI bridge network of an Env.
type Network struct {
	Name    string
	Bridge  string
	Subnet  *net.IPNet
	Gateway net.IP
}

// Require skips the test unless this machine can run an Env: root, and
// every tool installed. When the environment variable CI is set it fails
// instead, so CI never silently skips.
func Require(t testing.TB) {
	t.Helper()
	if err := check(); err != nil {
		testenv.Unavailable(t, "critest: %v", err)
	}
}

// check reports the first reason an Env cannot run here.
func check() error {
	if runtime.GOOS != "linux" {
		return errors.New("needs linux")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	if _, err := findTools(); err != nil {
		return fmt.Errorf("%w (hack/install-deps.sh installs the tools)", err)
	}
	if err := testimages.Check(); err != nil {
		return fmt.Errorf("%w (hack/install-deps.sh installs it)", err)
	}
	return nil
}

// Start starts containerd with CRI as configured by opts and returns once
// it is ready and the test images are imported. Everything is undone by a
// t.Cleanup; a failure shows containerd's log.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	RequireContainerd(t, opts.Containerd)
	started := time.Now()
	sweepStale(t)
	e, err := newEnv(opts)
	if e != nil {
		e.opts = opts
		t.Cleanup(func() { e.cleanup(t) })
	}
	if err != nil {
		t.Fatalf("critest: %v", err)
	}
	if err := e.start(opts); err != nil {
		e.dumpLog(t)
		t.Fatalf("critest: %v", err)
	}
	t.Logf("critest: containerd ready in %v (dir %s, socket %s)", time.Since(started).Round(time.Millisecond), e.Dir, e.Socket)
	return e
}

// newEnv lays out the directories of an Env. Paths are kept short: a
// shim socket dir may have at most 42 characters and a unix socket path 107.
func newEnv(opts Options) (*Env, error) {
	tl, err := findTools()
	if err != nil {
		return nil, err
	}
	gen, err := generationOf(opts.Containerd)
	if err != nil {
		return nil, err
	}
	if gen.bin != "" {
		tl.containerd = gen.bin
	}
	if gen.configVersion < 3 && len(opts.ShimEnv) > 0 {
		return nil, fmt.Errorf("ShimEnv is not supported with containerd %s", gen.version)
	}
	dir, err := os.MkdirTemp(shortTempDir(), "critest-")
	if err != nil {
		return nil, err
	}
	e := &Env{
		Dir:           dir,
		Root:          filepath.Join(dir, "root"),
		StateDir:      filepath.Join(dir, "state"),
		Socket:        filepath.Join(dir, "containerd.sock"),
		TTRPCSocket:   filepath.Join(dir, "containerd.sock.ttrpc"),
		ShimSocketDir: filepath.Join(dir, "s"),
		RuncRoot:      filepath.Join(dir, "runc"),
		StoreRoot:     filepath.Join(dir, "store"),
		StatusDir:     filepath.Join(dir, "fetches"),
		FetchSlotsDir: filepath.Join(dir, "fetch-slots"),
		ConfigPath:    filepath.Join(dir, "config.toml"),
		LogPath:       filepath.Join(dir, "containerd.log"),
		PodLogDir:     filepath.Join(dir, "pods"),
		CgroupParent:  "/" + filepath.Base(dir),
		tools:         tl,
		crictlConfig:  filepath.Join(dir, "crictl.yaml"),
		crictlTimeout: opts.CrictlTimeout,
		gen:           gen,
	}
	if err := e.writeOwner(); err != nil {
		return e, err
	}
	if e.crictlTimeout <= 0 {
		e.crictlTimeout = 60 * time.Second
	}
	if len(e.ShimSocketDir) > 42 {
		return e, fmt.Errorf("shim socket dir %s is longer than 42 characters: set TMPDIR shorter", e.ShimSocketDir)
	}
	for _, d := range []string{e.Root, e.StateDir, e.RuncRoot, e.StoreRoot, e.PodLogDir, filepath.Join(dir, "tmp"), filepath.Join(dir, "images")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return e, err
		}
	}
	// containerd's state (the bundles) lives on a tmpfs, as
	// /run/containerd does on a real node, so a test can tell what lands
	// there; cleanup unmounts everything under the Env's dir.
	if err := unix.Mount("tmpfs", e.StateDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return e, fmt.Errorf("tmpfs for the state dir: %w", err)
	}
	return e, nil
}

// shortTempDir is $TMPDIR when it is short enough for socket paths, else /tmp.
func shortTempDir() string {
	if d := os.TempDir(); len(d) <= 16 {
		return d
	}
	return "/tmp"
}

// start writes the configuration, starts containerd, waits for CRI and
// imports the images (built while containerd starts).
func (e *Env) start(opts Options) error {
	type built struct {
		tars []string
		err  error
	}
	images := make(chan built, 1)
	go func() {
		tars, err := e.writeImages(opts.Images)
		images <- built{tars, err}
	}()
	// Wait for the image build on every return.
	var img built
	waited := false
	waitImages := func() built {
		if !waited {
			img, waited = <-images, true
		}
		return img
	}
	defer waitImages()

	var err error
	if e.netLock, err = lockNetwork(); err != nil {
		return err
	}
	e.Network = e.netLock.network
	if err := e.writeCNIConfig(); err != nil {
		return err
	}
	var cfg map[string]any
	if e.gen.configVersion == 2 {
		cfg, err = e.containerd17Config(opts)
	} else {
		cfg, err = e.containerdConfig(opts)
	}
	if err != nil {
		return err
	}
	if err := writeTOML(e.ConfigPath, cfg); err != nil {
		return err
	}
	if err := e.writeCrictlConfig(); err != nil {
		return err
	}
	if err := e.startContainerd(opts); err != nil {
		return err
	}
	if err := e.waitSocket(15 * time.Second); err != nil {
		return err
	}
	if img := waitImages(); img.err != nil {
		return img.err
	}
	if err := e.importImages(img.tars); err != nil {
		return err
	}
	return e.waitCRIReady(15 * time.Second)
}

// writeImages builds the pause and busybox tarballs and returns them with
// the extra ones.
func (e *Env) writeImages(extra []string) ([]string, error) {
	dir := filepath.Join(e.Dir, "images")
	pause, _, err := testimages.WritePause(dir)
	if err != nil {
		return nil, err
	}
	busybox, _, err := testimages.WriteBusybox(dir)
	if err != nil {
		return nil, err
	}
	return append([]string{pause, busybox}, extra...), nil
}

// startContainerd starts containerd as a child, logging to LogPath.
func (e *Env) startContainerd(opts Options) error {
	logFile, err := os.OpenFile(e.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(e.tools.containerd, "--config", e.ConfigPath)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = e.Dir
	cmd.Env = e.containerdEnviron(opts)
	// Own process group, so a terminal's ^C reaches the test, not containerd;
	// killed if the test process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	e.cmd = cmd
	e.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(e.exited)
	}()
	return nil
}

// containerdEnviron is the test's environment with PATH leading to the
// extra dirs, the shim's dir, the tools and runc, and TMPDIR in the Env.
func (e *Env) containerdEnviron(opts Options) []string {
	path := append([]string{}, opts.ExtraPath...)
	if opts.ShimPath != "" {
		path = append(path, filepath.Dir(opts.ShimPath))
	}
	path = append(path, filepath.Dir(e.tools.containerd), filepath.Dir(e.tools.shimRunc), filepath.Dir(e.tools.runc))
	if p := os.Getenv("PATH"); p != "" {
		path = append(path, p)
	} else {
		path = append(path, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "TMPDIR=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+strings.Join(path, ":"), "TMPDIR="+filepath.Join(e.Dir, "tmp"))
}

// waitSocket waits until containerd accepts connections on Socket.
func (e *Env) waitSocket(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("unix", e.Socket, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-e.exited:
			return fmt.Errorf("containerd exited before serving %s: %v", e.Socket, e.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd not serving %s after %v: %w", e.Socket, timeout, err)
		}
	}
}

// importImages imports image tarballs into the CRI namespace, unpacked,
// in parallel.
func (e *Env) importImages(tars []string) error {
	errs := make(chan error, len(tars))
	for _, tar := range tars {
		go func() { errs <- e.importImage(tar) }()
	}
	var all []error
	for range tars {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// importImage imports one image tarball.
func (e *Env) importImage(tarPath string) error {
	out, err := exec.Command(e.tools.ctr, "--address", e.Socket, "--namespace", Namespace,
		"images", "import", "--local", tarPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w\n%s", tarPath, err, out)
	}
	return nil
}

// waitCRIReady waits until the CRI plugin reports the runtime and the
// network ready.
func (e *Env) waitCRIReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		out, err := e.CrictlErr("info")
		if err == nil && criReady(out) {
			return nil
		}
		last = out
		if err != nil {
			last = err.Error()
		}
		select {
		case <-e.exited:
			return fmt.Errorf("containerd exited: %v", e.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRI not ready after %v: %s", timeout, last)
		}
	}
}

// dumpLog logs containerd's log (its tail when long).
func (e *Env) dumpLog(t testing.TB) {
	t.Helper()
	data, err := os.ReadFile(e.LogPath)
	if err != nil {
		return
	}
	const max = 64 << 10
	if len(data) > max {
		data = data[len(data)-max:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
		data = append([]byte("...\n"), data...)
	}
	t.Logf("critest: containerd log %s:\n%s", e.LogPath, data)
}
