package shim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/fetchslot"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// Config is the runtime's `options` table in containerd's config: our
// keys and runc's, side by side, CamelCase like runc's.
type Config struct {
	Substituters      []string
	TrustedPublicKeys []string
	StoreRoot         string // the store is <StoreRoot>/nix/store
	NetrcFile         string
	MaxJobs           int
	FetchTimeout      string // a Go duration; how long one closure may take in all; default 30m
	StatusDir         string // where the fetch records (pkg/fetchrecord) for the node agent go; default /run/storepkg/fetches, "-" for none
	FetchBinary       string // the storepkg CLI that substitutes closures; default: storepkg beside the shim, else in PATH
	System            string // the node's Nix system, whose paths it takes from per-system annotations; default from the shim's GOARCH
	// PeersFile is the peers file the node agent writes (pkg/peer):
	// the fetch child takes paths from the node's peers. Unset: the
	// default, /run/storepkg/peers/peers.json; "": no peers. A missing
	// or bad file means no peers, never a failed fetch.
	PeersFile *string

	// What one pod may ask for (docs/runtime.md); unset: the default,
	// 0: no limit.
	MaxPathAnnotations *int   // storepkg.dev/paths.<container> keys per pod; default 16
	MaxPathsPerPod     *int   // store paths named by a pod's annotations, summed over keys; default 64
	MaxClosureNarBytes *int64 // NAR bytes (signed NarSize) the closure of all of a pod's paths adds to the store; default 20 GiB
	MaxClosurePaths    *int   // paths that closure adds to the store; default 10000

	// What the node's fetches may use together (docs/runtime.md,
	// "Resource bounds").
	MaxConcurrentFetches *int   // fetch children downloading at once, node-wide; default 2, 0: no bound
	FetchSlotsDir        string // where the slots are (pkg/fetchslot); default /run/storepkg/fetch-slots
	MaxLookupJobs        int    // parallel narinfo requests per fetch; default the child's, 64
	FetchMaxProcs        int    // the fetch child's GOMAXPROCS; default Go's (the CPUs it may use)
	FetchMemoryLimit     string // the fetch child's GOMEMLIMIT (e.g. "1GiB"); default none

	// runc's own options, translated to its type (never passed raw).
	BinaryName    string
	Root          string
	SystemdCgroup bool
	NoPivotRoot   bool
	NoNewKeyring  bool
	ShimCgroup    string
	IoUid         uint32
	IoGid         uint32
	CriuImagePath string
	CriuWorkPath  string
}

// parseOptions reads the node config from a Create request's options:
// runtimeoptions.Options carrying the TOML table (ConfigBody) or a file
// (ConfigPath). Unknown keys are refused so a typo does not silently fall
// back to a default.
func parseOptions(opts *anypb.Any) (*Config, error) {
	cfg := &Config{}
	if opts == nil || len(opts.GetValue()) == 0 {
		return cfg.withDefaults(), nil
	}
	v, err := typeurl.UnmarshalAny(opts)
	if err != nil {
		return nil, fmt.Errorf("runtime options: %w", err)
	}
	switch o := v.(type) {
	case *runtimeoptions.Options:
		body := o.ConfigBody
		src := "runtime options"
		if o.ConfigPath != "" {
			src = o.ConfigPath
			if body, err = os.ReadFile(o.ConfigPath); err != nil {
				return nil, fmt.Errorf("runtime options ConfigPath: %w", err)
			}
		}
		dec := toml.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			var strict *toml.StrictMissingError
			if errors.As(err, &strict) {
				var keys []string
				for _, e := range strict.Errors {
					keys = append(keys, strings.Join(e.Key(), "."))
				}
				return nil, fmt.Errorf("storepkg config (%s): unknown keys %s: %w", src, strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("storepkg config (%s): %v: %w", src, err, errdefs.ErrInvalidArgument)
		}
	case *runcoptions.Options:
		// Configured with runc's options type: take them, use our defaults.
		cfg.BinaryName, cfg.Root, cfg.SystemdCgroup = o.BinaryName, o.Root, o.SystemdCgroup
		cfg.NoPivotRoot, cfg.NoNewKeyring, cfg.ShimCgroup = o.NoPivotRoot, o.NoNewKeyring, o.ShimCgroup
		cfg.IoUid, cfg.IoGid, cfg.CriuImagePath, cfg.CriuWorkPath = o.IoUid, o.IoGid, o.CriuImagePath, o.CriuWorkPath
	default:
		return nil, fmt.Errorf("runtime options of type %T: %w", v, errdefs.ErrInvalidArgument)
	}
	if err := cfg.checkLimits(); err != nil {
		return nil, err
	}
	if err := checkSystem(cfg.System); err != nil {
		return nil, err
	}
	return cfg.withDefaults(), nil
}

// The defaults of the per-pod limits: far above what real pods use (a
// container or two, a few root paths, closures of hundreds of paths and
// a few GiB), far below what exhausts a node (processes, disk).
const (
	defaultMaxPathAnnotations = 16
	defaultMaxPathsPerPod     = 64
	defaultMaxClosureNarBytes = 20 << 30
	defaultMaxClosurePaths    = 10000
	// Two: one fetch already uses every core and MaxJobs downloads;
	// the second lets a small closure pass a large one.
	defaultMaxConcurrentFetches = 2
	// defaultPeersFile is peer.DefaultFile, where the agent writes it
	// (the shim does not link pkg/peer).
	defaultPeersFile = "/run/storepkg/peers/peers.json"
)

// checkLimits refuses negative limits, naming the key.
func (c *Config) checkLimits() error {
	for _, l := range []struct {
		key string
		neg bool
	}{
		{"MaxPathAnnotations", c.MaxPathAnnotations != nil && *c.MaxPathAnnotations < 0},
		{"MaxPathsPerPod", c.MaxPathsPerPod != nil && *c.MaxPathsPerPod < 0},
		{"MaxClosureNarBytes", c.MaxClosureNarBytes != nil && *c.MaxClosureNarBytes < 0},
		{"MaxClosurePaths", c.MaxClosurePaths != nil && *c.MaxClosurePaths < 0},
		{"MaxConcurrentFetches", c.MaxConcurrentFetches != nil && *c.MaxConcurrentFetches < 0},
		{"MaxJobs", c.MaxJobs < 0},
		{"MaxLookupJobs", c.MaxLookupJobs < 0},
		{"FetchMaxProcs", c.FetchMaxProcs < 0},
	} {
		if l.neg {
			return fmt.Errorf("storepkg config %s: negative (0 means the default or no limit): %w", l.key, errdefs.ErrInvalidArgument)
		}
	}
	if c.FetchMemoryLimit != "" && !validMemoryLimit(c.FetchMemoryLimit) {
		return fmt.Errorf("storepkg config FetchMemoryLimit %q: want a byte count with an optional unit B, KiB, MiB, GiB or TiB (Go's GOMEMLIMIT), e.g. \"1GiB\": %w",
			c.FetchMemoryLimit, errdefs.ErrInvalidArgument)
	}
	if c.PeersFile != nil && *c.PeersFile != "" && !filepath.IsAbs(*c.PeersFile) {
		return fmt.Errorf("storepkg config PeersFile %q: not an absolute path: %w", *c.PeersFile, errdefs.ErrInvalidArgument)
	}
	if c.FetchSlotsDir != "" && !filepath.IsAbs(c.FetchSlotsDir) {
		return fmt.Errorf("storepkg config FetchSlotsDir %q: not an absolute path: %w", c.FetchSlotsDir, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validMemoryLimit reports whether the Go runtime takes s as GOMEMLIMIT
// (it would otherwise crash the child at start).
func validMemoryLimit(s string) bool {
	num := strings.TrimRight(s, "BKMGTi")
	unit := s[len(num):]
	if num == "" || strings.Trim(num, "0123456789") != "" {
		return false
	}
	return slices.Contains([]string{"", "B", "KiB", "MiB", "GiB", "TiB"}, unit)
}

// fetchSlots is the node's bound on concurrent fetches; nil: none.
func (c *Config) fetchSlots() *fetchexec.Slots {
	n := valueOr(c.MaxConcurrentFetches, defaultMaxConcurrentFetches)
	if n == 0 {
		return nil
	}
	dir := c.FetchSlotsDir
	if dir == "" {
		dir = fetchslot.DefaultDir
	}
	return &fetchexec.Slots{Dir: dir, N: n}
}

// annotationLimits is what parseAnnotations allows a pod.
func (c *Config) annotationLimits() annotationLimits {
	return annotationLimits{perContainerKeys: valueOr(c.MaxPathAnnotations, defaultMaxPathAnnotations), paths: valueOr(c.MaxPathsPerPod, defaultMaxPathsPerPod)}
}

// nodeSystem is the Nix system whose paths this node takes from a pod's
// per-system annotations: System, else the shim's own architecture's.
func (c *Config) nodeSystem() string {
	if c.System != "" {
		return c.System
	}
	return defaultSystem()
}

// valueOr is *p, or def when the key is unset.
func valueOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// withDefaults fills in the shim's defaults. Without Substituters the
// fetch child uses its own default cache and key (cache.nixos.org).
func (c *Config) withDefaults() *Config {
	if c.StoreRoot == "" {
		c.StoreRoot = "/"
	}
	return c
}

// runcOptions translates to the options type runc's task service expects.
func (c *Config) runcOptions() (*anypb.Any, error) {
	o := &runcoptions.Options{
		BinaryName: c.BinaryName, Root: c.Root, SystemdCgroup: c.SystemdCgroup,
		NoPivotRoot: c.NoPivotRoot, NoNewKeyring: c.NoNewKeyring, ShimCgroup: c.ShimCgroup,
		IoUid: c.IoUid, IoGid: c.IoGid, CriuImagePath: c.CriuImagePath, CriuWorkPath: c.CriuWorkPath,
	}
	a, err := typeurl.MarshalAnyToProto(o)
	if err != nil {
		return nil, fmt.Errorf("runc options: %w", err)
	}
	return a, nil
}

// checkFetch refuses settings the fetch child would refuse, so the error
// names the config key and arrives as InvalidArgument.
func (c *Config) checkFetch() error {
	for _, k := range c.TrustedPublicKeys {
		if _, err := narinfo.ParsePublicKey(k); err != nil {
			return fmt.Errorf("storepkg config TrustedPublicKeys: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	if c.NetrcFile != "" {
		if _, err := os.Stat(c.NetrcFile); err != nil {
			return fmt.Errorf("storepkg config NetrcFile: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// fetchRequest is the fetch child's request for paths, with these GC roots.
func (c *Config) fetchRequest(binary string, paths []storepath.Path, roots []fetchexec.GCRoot) fetchexec.Request {
	return fetchexec.Request{
		Binary:            binary,
		StoreRoot:         c.StoreRoot,
		Substituters:      c.Substituters,
		TrustedPublicKeys: c.TrustedPublicKeys,
		NetrcFile:         c.NetrcFile,
		PeersFile:         valueOr(c.PeersFile, defaultPeersFile),
		MaxJobs:           c.MaxJobs,
		MaxLookups:        c.MaxLookupJobs,
		Slots:             c.fetchSlots(),
		MaxProcs:          c.FetchMaxProcs,
		MemoryLimit:       c.FetchMemoryLimit,
		Timeout:           c.fetchTimeout(),
		MaxNarBytes:       valueOr(c.MaxClosureNarBytes, defaultMaxClosureNarBytes),
		MaxPaths:          valueOr(c.MaxClosurePaths, defaultMaxClosurePaths),
		Paths:             paths,
		GCRoots:           roots,
	}
}

// fetchBinary finds the storepkg CLI: FetchBinary, else storepkg in the
// shim's own directory (where node install puts both), else in PATH.
func (c *Config) fetchBinary() (string, error) {
	if c.FetchBinary != "" {
		if _, err := os.Stat(c.FetchBinary); err != nil {
			return "", fmt.Errorf("storepkg config FetchBinary: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return c.FetchBinary, nil
	}
	var tried []string
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), fetchBinaryName)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
		tried = append(tried, filepath.Dir(self))
	}
	if p, err := exec.LookPath(fetchBinaryName); err == nil {
		return p, nil
	}
	tried = append(tried, "PATH")
	return "", fmt.Errorf("storepkg: the storepkg CLI, which substitutes closures, is in none of %s (install it beside the shim or set FetchBinary): %w",
		strings.Join(tried, ", "), errdefs.ErrFailedPrecondition)
}

// fetchBinaryName is the CLI node install puts beside the shim.
const fetchBinaryName = "storepkg"

func (c *Config) fetchTimeout() time.Duration {
	if d, err := time.ParseDuration(c.FetchTimeout); err == nil && d > 0 {
		return d
	}
	return 30 * time.Minute
}
