package shim

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/storepath"
)

func anyOf(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestConfigFromContainerdOptions(t *testing.T) {
	body := `
Substituters = ["http://127.0.0.1:5000", "https://cache.nixos.org"]
TrustedPublicKeys = ["test-1:4mM2NTiDBkPaT+Ya0Ym0/qDpfdY+vpFJX5CiVIOKbck="]
StoreRoot = "/var/lib/storepkg"
MaxJobs = 8
BinaryName = "/usr/sbin/runc"
Root = "/run/storepkg-runc"
SystemdCgroup = true
`
	cfg, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(body)}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StoreRoot != "/var/lib/storepkg" || len(cfg.Substituters) != 2 || cfg.MaxJobs != 8 {
		t.Errorf("config: %+v", cfg)
	}
	if err := cfg.checkFetch(); err != nil {
		t.Errorf("fetch settings: %v", err)
	}
	// The fetch child gets the node's settings on its command line, but
	// the caches on its stdin: a substituter URL may carry a password.
	p, _ := storepath.Parse("/nix/store/7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	req := cfg.fetchRequest("storepkg", []storepath.Path{p}, []fetchexec.GCRoot{{Name: "pod-7wfya", Path: p}})
	args := strings.Join(req.Args(), " ")
	want := "fetch --json --root /var/lib/storepkg --cache-config - --peers /run/storepkg/peers/peers.json --max-jobs 8 --timeout 30m0s --max-nar-bytes 21474836480 --max-paths 10000 " +
		"--gc-root pod-7wfya=" + p.Absolute() + " -- " + p.Absolute()
	if args != want {
		t.Errorf("fetch child args:\n got %s\nwant %s", args, want)
	}
	if cc := req.CacheConfig(); !slices.Equal(cc.Substituters, cfg.Substituters) || !slices.Equal(cc.TrustedPublicKeys, cfg.TrustedPublicKeys) {
		t.Errorf("fetch child caches %+v", cc)
	}
	// runc gets its own options type, with its keys translated.
	a, err := cfg.runcOptions()
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatal(err)
	}
	ro, ok := v.(*runcoptions.Options)
	if !ok || ro.BinaryName != "/usr/sbin/runc" || ro.Root != "/run/storepkg-runc" || !ro.SystemdCgroup {
		t.Errorf("runc options: %#v", v)
	}

	// The same table from a file (ConfigPath).
	file := filepath.Join(t.TempDir(), "storepkg.toml")
	os.WriteFile(file, []byte(body), 0o644)
	cfg2, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigPath: file}))
	if err != nil || cfg2.StoreRoot != cfg.StoreRoot {
		t.Errorf("ConfigPath: %+v, %v", cfg2, err)
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	cfg, err := parseOptions(nil)
	if err != nil || len(cfg.Substituters) != 0 || cfg.StoreRoot != "/" {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	// No substituters: the child's own default cache and key apply.
	if args := strings.Join(cfg.fetchRequest("storepkg", nil, nil).Args(), " "); strings.Contains(args, "--substituter") || strings.Contains(args, "--trusted-public-key") {
		t.Errorf("default fetch child args: %s", args)
	}
	_, err = parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`Substituter = "typo"`)}))
	if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "Substituter") {
		t.Errorf("unknown key: %v", err)
	}
	cfg, _ = parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`TrustedPublicKeys = ["nocolon"]`)}))
	if err := cfg.checkFetch(); err == nil || !strings.Contains(err.Error(), "TrustedPublicKeys") || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad key: %v", err)
	}
}

// TestConfigLimits: the per-pod limits default when unset, 0 lifts one,
// a negative one is refused naming its key.
func TestConfigLimits(t *testing.T) {
	p, _ := storepath.Parse("/nix/store/7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	def, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("MaxJobs = 2\n")}))
	if err != nil {
		t.Fatal(err)
	}
	if got := def.annotationLimits(); got != (annotationLimits{perContainerKeys: 16, paths: 64}) {
		t.Errorf("default annotation limits %+v", got)
	}
	if req := def.fetchRequest("storepkg", []storepath.Path{p}, nil); req.MaxNarBytes != 20<<30 || req.MaxPaths != 10000 {
		t.Errorf("default closure limits %d bytes, %d paths", req.MaxNarBytes, req.MaxPaths)
	}

	cfg, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`
MaxPathAnnotations = 2
MaxPathsPerPod = 0
MaxClosureNarBytes = 0
MaxClosurePaths = 5
`)}))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.annotationLimits(); got != (annotationLimits{perContainerKeys: 2, paths: 0}) {
		t.Errorf("annotation limits %+v", got)
	}
	args := strings.Join(cfg.fetchRequest("storepkg", []storepath.Path{p}, nil).Args(), " ")
	if strings.Contains(args, "--max-nar-bytes") || !strings.Contains(args, "--max-paths 5 ") {
		t.Errorf("fetch child args: %s", args)
	}

	for _, key := range []string{"MaxPathAnnotations", "MaxPathsPerPod", "MaxClosureNarBytes", "MaxClosurePaths",
		"MaxConcurrentFetches", "MaxJobs", "MaxLookupJobs", "FetchMaxProcs"} {
		_, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(key + " = -1\n")}))
		if err == nil || !strings.Contains(err.Error(), key) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s = -1: %v, want InvalidArgument naming it", key, err)
		}
	}
}

// TestConfigNodeBounds: the node-wide bounds on fetches default to two
// slots under /run, 0 lifts the bound, the child's Go runtime gets
// GOMAXPROCS and GOMEMLIMIT, and bad values are refused naming the key.
func TestConfigNodeBounds(t *testing.T) {
	p, _ := storepath.Parse("/nix/store/7wfya0ry0kysw5wi5xqx0h1jmmc6ghc3-hello-2.12.1")
	def, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("MaxJobs = 2\n")}))
	if err != nil {
		t.Fatal(err)
	}
	req := def.fetchRequest("storepkg", []storepath.Path{p}, nil)
	if req.Slots == nil || *req.Slots != (fetchexec.Slots{Dir: "/run/storepkg/fetch-slots", N: 2}) || req.Env() != nil {
		t.Errorf("default node bounds: slots %+v, env %v", req.Slots, req.Env())
	}
	cfg, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`
MaxConcurrentFetches = 3
FetchSlotsDir = "/run/x"
MaxLookupJobs = 8
FetchMaxProcs = 1
FetchMemoryLimit = "512MiB"
`)}))
	if err != nil {
		t.Fatal(err)
	}
	req = cfg.fetchRequest("storepkg", []storepath.Path{p}, nil)
	env := req.Env()
	if *req.Slots != (fetchexec.Slots{Dir: "/run/x", N: 3}) || !slices.Contains(env, "GOMAXPROCS=1") || !slices.Contains(env, "GOMEMLIMIT=512MiB") ||
		!strings.Contains(strings.Join(req.Args(), " "), "--max-lookups 8 ") {
		t.Errorf("node bounds: slots %+v, args %v, env has GOMAXPROCS=1 %v, GOMEMLIMIT=512MiB %v", req.Slots, req.Args(),
			slices.Contains(env, "GOMAXPROCS=1"), slices.Contains(env, "GOMEMLIMIT=512MiB"))
	}
	off, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("MaxConcurrentFetches = 0\n")}))
	if err != nil || off.fetchRequest("storepkg", nil, nil).Slots != nil {
		t.Errorf("MaxConcurrentFetches = 0: %v", err)
	}
	for _, body := range []string{`FetchMemoryLimit = "1GB"`, `FetchMemoryLimit = "lots"`, `FetchMemoryLimit = "1.5GiB"`, `FetchSlotsDir = "run/x"`} {
		key, _, _ := strings.Cut(body, " ")
		_, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(body)}))
		if err == nil || !strings.Contains(err.Error(), key) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument naming it", body, err)
		}
	}
}

// TestConfigPeersFile: the fetch child reads the agent's peers file at
// its default place unless PeersFile names another or is "" (off); a
// relative path is refused naming the key.
func TestConfigPeersFile(t *testing.T) {
	if defaultPeersFile != peer.DefaultFile {
		t.Errorf("the shim's default peers file %s, the agent's %s", defaultPeersFile, peer.DefaultFile)
	}
	for _, c := range []struct{ body, want string }{
		{"", "--peers " + peer.DefaultFile + " "},
		{`PeersFile = "/etc/storepkg/peers.json"`, "--peers /etc/storepkg/peers.json "},
		{`PeersFile = ""`, ""},
	} {
		cfg, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(c.body)}))
		if err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		args := strings.Join(cfg.fetchRequest("storepkg", nil, nil).Args(), " ")
		if c.want == "" && strings.Contains(args, "--peers") || c.want != "" && !strings.Contains(args, c.want) {
			t.Errorf("%s: fetch child args %s, want %q", c.body, args, c.want)
		}
	}
	_, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`PeersFile = "peers.json"`)}))
	if err == nil || !strings.Contains(err.Error(), "PeersFile") || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("relative PeersFile: %v", err)
	}
}

// TestConfigSystem: the node's Nix system follows the shim's GOARCH
// unless System sets it; a System that is no Nix Linux system is refused
// naming the key.
func TestConfigSystem(t *testing.T) {
	want := map[string]string{"amd64": "x86_64-linux", "arm64": "aarch64-linux"}[runtime.GOARCH]
	def, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("MaxJobs = 2\n")}))
	if err != nil {
		t.Fatal(err)
	}
	if want != "" && def.nodeSystem() != want {
		t.Errorf("GOARCH %s: node system %q, want %q", runtime.GOARCH, def.nodeSystem(), want)
	}
	if runc, err := parseOptions(anyOf(t, &runcoptions.Options{BinaryName: "runc"})); err != nil || runc.nodeSystem() != def.nodeSystem() {
		t.Errorf("runc's options: node system %q, %v", runc.nodeSystem(), err)
	}
	cfg, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`System = "armv6l-linux"`)}))
	if err != nil || cfg.nodeSystem() != "armv6l-linux" {
		t.Errorf(`System = "armv6l-linux": %v`, err)
	}
	for _, bad := range []string{"arm64", "aarch64-darwin", "x86_64-Linux"} {
		_, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`System = "` + bad + `"`)}))
		if err == nil || !strings.Contains(err.Error(), `storepkg config System "`+bad+`": not a Nix Linux system`) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("System = %q: %v, want InvalidArgument naming it", bad, err)
		}
	}
}
