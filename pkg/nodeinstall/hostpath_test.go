package nodeinstall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/internal/testenv"
)

// The installer sees the host's / at --host-root and resolves every host
// path inside it, as the host does: these nodes have symbolic links where
// the installer reads and writes. Each is installed, checked with the real
// containerd (chrooted into the host root, so it follows the links as the
// host's would), installed again (no change) and uninstalled (every file
// and every link as before, byte for byte).
func TestInstallThroughLinks(t *testing.T) {
	const etc = "/etc/containerd/config.toml"
	const k3s = k3sDir + "/config.toml"
	nixEtc := "/nix/store/0c5lrqc0qa2ib7gk4zqqz4vqbnc1f1a0-etc/etc"
	for _, c := range []installCase{{
		name:        "containerd 1.7, config.toml an absolute link into the host root",
		files:       map[string]string{"/srv/containerd/config.toml": testdataString("containerd-1.7.35-default.toml")},
		links:       map[string]string{etc: "/srv/containerd/config.toml"},
		containerd:  "1.7.35",
		wantEdited:  "/srv/containerd/config.toml",
		wantRestart: "systemctl restart containerd",
	}, {
		name:        "kind config with containerd 2.3, config.toml a relative link",
		files:       map[string]string{"/etc/containerd/kind/config.toml": testdataString("kind-v0.31.0.toml")},
		links:       map[string]string{etc: "kind/config.toml"},
		containerd:  "2.3.4",
		wantDropIn:  "/etc/containerd/conf.d/storepkg.toml",
		wantEdited:  "/etc/containerd/kind/config.toml",
		wantSystemd: true,
		wantRestart: "systemctl restart containerd",
	}, {
		name:        "containerd 1.7, a relative link climbing out of the host root resolves inside it",
		files:       map[string]string{"/srv/containerd/config.toml": testdataString("containerd-1.7.35-default.toml")},
		links:       map[string]string{etc: strings.Repeat("../", 12) + "srv/containerd/config.toml"},
		containerd:  "1.7.35",
		wantEdited:  "/srv/containerd/config.toml",
		wantRestart: "systemctl restart containerd",
	}, {
		name:        "containerd 2.3, /etc/containerd a link to another directory",
		files:       map[string]string{"/etc/static/containerd/config.toml": testdataString("containerd-2.3.4-default.toml")},
		links:       map[string]string{"/etc/containerd": "/etc/static/containerd"},
		containerd:  "2.3.4",
		wantDropIn:  "/etc/static/containerd/conf.d/storepkg.toml",
		wantRestart: "systemctl restart containerd",
	}, {
		// NixOS: config.toml -> /etc/static/containerd/config.toml, /etc/static
		// -> the store. A config that imports drop-ins is never edited.
		name:  "NixOS-like: config.toml in the Nix store, importing conf.d (containerd 2.3)",
		files: map[string]string{nixEtc + "/containerd/config.toml": testdataString("containerd-2.3.4-default.toml"), "/etc/containerd/.keep": ""},
		links: map[string]string{
			"/etc/static": nixEtc,
			etc:           "/etc/static/containerd/config.toml",
		},
		containerd:  "2.3.4",
		wantDropIn:  "/etc/containerd/conf.d/storepkg.toml",
		wantRestart: "systemctl restart containerd",
	}, {
		// Fedora CoreOS has /opt -> var/opt; here an absolute one, and
		// /etc/storepkg elsewhere too.
		name: "containerd 2.3, /opt and /etc/storepkg links",
		files: map[string]string{
			etc:                       testdataString("containerd-2.3.4-default.toml"),
			"/var/opt/.keep":          "",
			"/var/lib/storepkg/.keep": "",
		},
		links: map[string]string{
			"/opt":          "/var/opt",
			"/etc/storepkg": "../var/lib/storepkg",
		},
		containerd:  "2.3.4",
		wantDropIn:  "/etc/containerd/conf.d/storepkg.toml",
		wantRestart: "systemctl restart containerd",
	}, {
		name: "k3s with the operator's own config.toml.tmpl, a link",
		files: map[string]string{
			k3s:                         testdataString("k3s-v1.28-config.toml") + "\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gvisor]\n  runtime_type = \"io.containerd.runsc.v1\"\n",
			"/srv/k3s/config.toml.tmpl": k3sBase + "\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gvisor]\n  runtime_type = \"io.containerd.runsc.v1\"\n",
		},
		links:        map[string]string{k3sDir + "/config.toml.tmpl": "/srv/k3s/config.toml.tmpl"},
		k3sBase:      testdataString("k3s-v1.28-config.toml"),
		containerd:   "2.3.4",
		flavor:       FlavorK3s,
		wantEdited:   "/srv/k3s/config.toml.tmpl",
		wantSystemd:  true,
		wantRestart:  "systemctl restart k3s-agent",
		renderedPath: k3s,
	}} {
		t.Run(c.name, func(t *testing.T) {
			testInstall(t, c)
		})
	}
}

// The plan names the file it edits and the link it edits it through.
func TestLinkedConfigPlan(t *testing.T) {
	root := newHost(t, map[string]string{"/srv/containerd/config.toml": testdataString("containerd-1.7.35-default.toml")})
	link(t, root, etcConfig, "/srv/containerd/config.toml")
	p, err := PlanInstall(context.Background(), Options{HostRoot: root, ContainerdVersion: "1.7.35"})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	p.Describe(&b)
	for _, want := range []string{
		"containerd config /etc/containerd/config.toml -> /srv/containerd/config.toml (version 2)",
		"create /srv/containerd/config.toml.storepkg-backup",
		"update /srv/containerd/config.toml (containerd root config) for /etc/containerd/config.toml -> /srv/containerd/config.toml",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, b.String())
		}
	}
}

// nixOSHost is a NixOS-like node: /etc/containerd/config.toml ->
// /etc/static/containerd/config.toml, /etc/static -> a store path.
func nixOSHost(t *testing.T, config string) string {
	t.Helper()
	const etc = "/nix/store/0c5lrqc0qa2ib7gk4zqqz4vqbnc1f1a0-etc/etc"
	root := newHost(t, map[string]string{etc + "/containerd/config.toml": config})
	link(t, root, "/etc/static", etc)
	link(t, root, etcConfig, "/etc/static/containerd/config.toml")
	return root
}

// linkOnly makes a host whose only file is a link.
func linkOnly(p, target string) func(t *testing.T) string {
	return func(t *testing.T) string {
		root := newHost(t, nil)
		link(t, root, p, target)
		return root
	}
}

// What install refuses, with an error that names the link and its
// target, and without changing anything on the host.
func TestLinkRefusals(t *testing.T) {
	for _, c := range []struct {
		name    string
		host    func(t *testing.T) string
		version string
		want    []string
	}{{
		name:    "NixOS: containerd 1.7 needs the root config, which is in the store",
		host:    func(t *testing.T) string { return nixOSHost(t, testdataString("containerd-1.7.35-default.toml")) },
		version: "1.7.35",
		want: []string{
			"/etc/containerd/config.toml is a symbolic link to /etc/static/containerd/config.toml",
			"/nix/store/0c5lrqc0qa2ib7gk4zqqz4vqbnc1f1a0-etc/etc/containerd/config.toml",
			"in the Nix store", "never replaces a link", "virtualisation.containerd.settings", "--containerd-config",
		},
	}, {
		name:    "NixOS: containerd 2.3 config without imports",
		host:    func(t *testing.T) string { return nixOSHost(t, "version = 3\n") },
		version: "2.3.4",
		want:    []string{"is a symbolic link to /etc/static/containerd/config.toml", "in the Nix store", `imports = ["/etc/containerd/conf.d/*.toml"]`},
	}, {
		name: "the drop-in directory is in the store (/etc/containerd a link)",
		host: func(t *testing.T) string {
			root := newHost(t, map[string]string{"/nix/store/0c5lrqc0qa2ib7gk4zqqz4vqbnc1f1a0-containerd/config.toml": testdataString("containerd-2.3.4-default.toml")})
			link(t, root, "/etc/containerd", "/nix/store/0c5lrqc0qa2ib7gk4zqqz4vqbnc1f1a0-containerd")
			return root
		},
		version: "2.3.4",
		want:    []string{"/etc/containerd/conf.d/storepkg.toml is /nix/store/0c5lrqc0qa2ib7gk4zqqz4vqbnc1f1a0-containerd/conf.d/storepkg.toml on the host", "in the Nix store"},
	}, {
		name:    "dangling link",
		host:    linkOnly(etcConfig, "/etc/static/containerd/config.toml"),
		version: "2.3.4",
		want:    []string{"/etc/containerd/config.toml is a symbolic link to /etc/static/containerd/config.toml, which does not exist on the host", "does not create a file over a link"},
	}, {
		name:    "dangling relative link",
		host:    linkOnly(etcConfig, "../static/config.toml"),
		version: "1.7.35",
		want:    []string{"/etc/containerd/config.toml is a symbolic link to ../static/config.toml, which does not exist"},
	}, {
		name:    "dangling link to a directory on the way",
		host:    linkOnly("/etc/containerd", "/etc/static/containerd"),
		version: "2.3.4",
		want:    []string{"/etc/containerd is a symbolic link to /etc/static/containerd, which does not exist"},
	}} {
		t.Run(c.name, func(t *testing.T) {
			root := c.host(t)
			before := snapshot(t, root)
			in := &Installer{
				Options: Options{HostRoot: root, ContainerdVersion: c.version, SourceDir: binaries(t), Runner: &fakeHost{root: root}},
				Probe:   func(context.Context) error { t.Error("probed"); return nil },
			}
			err := in.Install(context.Background())
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("got %v\nwant an error with %q", err, w)
				}
			}
			if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
				t.Errorf("a refused install changed the host: %v", d)
			}
			// Uninstall has nothing to undo there, and does not fail.
			if err := in.Uninstall(context.Background()); err != nil {
				t.Errorf("uninstall: %v", err)
			}
			if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
				t.Errorf("uninstall changed the host: %v", d)
			}
		})
	}
}

// A link whose target is on a read-only mount is refused like one into
// the store.
func TestLinkToReadOnlyMount(t *testing.T) {
	testenv.Root(t, "bind-mount a directory read-only")
	root := newHost(t, map[string]string{"/srv/ro/config.toml": testdataString("containerd-1.7.35-default.toml")})
	link(t, root, etcConfig, "/srv/ro/config.toml")
	ro := filepath.Join(root, "srv/ro")
	if err := unix.Mount(ro, ro, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(ro, unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	_, err := PlanInstall(context.Background(), Options{HostRoot: root, ContainerdVersion: "1.7.35"})
	want := "/etc/containerd/config.toml is a symbolic link to /srv/ro/config.toml: storepkg would edit the file where it lives, /srv/ro/config.toml, but its file system is mounted read-only"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v\nwant %q", err, want)
	}
	if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
		t.Errorf("changed %v", d)
	}
}

// A link to a file outside the host root, absolute or climbing with
// `..`, resolves inside the root as on the host: the file outside is
// never read or written.
func TestLinkOutOfRoot(t *testing.T) {
	ctx := context.Background()
	outside := t.TempDir()
	decoy := filepath.Join(outside, "config.toml")
	const decoyData = "version = 2\n# the installer's own file system, not the host's\n"
	if err := os.WriteFile(decoy, []byte(decoyData), 0o644); err != nil {
		t.Fatal(err)
	}
	orig := testdataString("containerd-1.7.35-default.toml")
	for _, target := range []string{decoy, strings.Repeat("../", 40) + strings.TrimPrefix(decoy, "/")} {
		for _, inside := range []bool{false, true} {
			name := "absolute"
			if !filepath.IsAbs(target) {
				name = "relative"
			}
			if inside {
				name += ", the same path inside the root exists"
			}
			t.Run(name, func(t *testing.T) {
				root := newHost(t, nil)
				link(t, root, etcConfig, target)
				if inside {
					put(t, root, decoy, orig)
				}
				before := snapshot(t, root)
				o := Options{HostRoot: root, ContainerdVersion: "1.7.35"}
				p, err := PlanInstall(ctx, o)
				if !inside {
					var dangling *danglingLinkError
					if !errors.As(err, &dangling) {
						t.Fatalf("got %v, want the link refused as dangling", err)
					}
				} else {
					if err != nil {
						t.Fatal(err)
					}
					if err := p.Apply(); err != nil {
						t.Fatal(err)
					}
					if got := read(t, root, etcConfig); !strings.Contains(got, "runtimes.storepkg]") {
						t.Errorf("the file in the root was not edited:\n%s", got)
					}
					if got := read(t, root, decoy+backupSuffix); got != orig {
						t.Error("no backup beside the file in the root")
					}
					if p, err = PlanUninstall(ctx, o); err != nil {
						t.Fatal(err)
					}
					if err := p.Apply(); err != nil {
						t.Fatal(err)
					}
					if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
						t.Errorf("uninstall left %v", d)
					}
				}
				if b, err := os.ReadFile(decoy); err != nil || string(b) != decoyData {
					t.Errorf("the file outside the root changed: %q %v", b, err)
				}
				if _, err := os.Stat(decoy + backupSuffix); err == nil {
					t.Error("a backup was written outside the root")
				}
			})
		}
	}
}

// noOpenat2Env makes TestMain deny openat2 to the test process.
const noOpenat2Env = "STOREPKG_TEST_NO_OPENAT2"

func TestMain(m *testing.M) {
	if os.Getenv(noOpenat2Env) != "" {
		if err := denyOpenat2(); err != nil {
			fmt.Fprintf(os.Stderr, "deny openat2: %v\n", err)
			os.Exit(3)
		}
	}
	os.Exit(m.Run())
}

// denyOpenat2 makes openat2 fail with ENOSYS in this process and its
// children, as on kernels before 5.6 (a seccomp filter on every thread).
func denyOpenat2() error {
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // the syscall number
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_OPENAT2, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return errno
	}
	if _, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}); err != unix.ENOSYS {
		return fmt.Errorf("openat2 still answers (%v)", err)
	}
	return nil
}

// Without openat2 (kernels before 5.6) filepath-securejoin resolves the
// paths in user space: the link tests run again in a child process that
// the kernel answers ENOSYS for openat2, with the same results.
func TestLinksWithoutOpenat2(t *testing.T) {
	if os.Getenv(noOpenat2Env) != "" {
		t.Skip("this is the child")
	}
	if _, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}); err != nil {
		t.Logf("this kernel has no openat2 (%v): the other tests already ran without it", err)
	}
	tests := []string{"TestInstallThroughLinks", "TestLinkedConfigPlan", "TestLinkRefusals", "TestLinkToReadOnlyMount", "TestLinkOutOfRoot", "TestHostFS"}
	cmd := exec.Command(os.Args[0], "-test.run=^("+strings.Join(tests, "|")+")$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), noOpenat2Env+"=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		testenv.Unavailable(t, "cannot deny openat2 with seccomp here: %s", out)
	}
	if err != nil {
		t.Fatalf("without openat2: %v\n%s", err, out)
	}
	for _, name := range tests {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Errorf("without openat2, %s did not pass:\n%s", name, out)
		}
	}
}
