package critest

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// baseConfig is the top of every containerd config of an Env, before its
// plugins: its own directories and sockets, no machine-wide imports, and
// plugins the tests never use off (fewer plugins, fewer warnings).
func (e *Env) baseConfig(version int, level string, moreDisabled ...string) map[string]any {
	disabled := append([]string{
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.aufs",
		"io.containerd.snapshotter.v1.blockfile",
		"io.containerd.tracing.processor.v1.otlp",
		"io.containerd.internal.v1.tracing",
	}, moreDisabled...)
	return map[string]any{
		"version": version,
		"root":    e.Root,
		"state":   e.StateDir,
		"temp":    filepath.Join(e.Dir, "tmp"),
		// No /etc/containerd/conf.d/*.toml of the machine.
		"imports":          []string{},
		"disabled_plugins": disabled,
		"oom_score":        0,
		"grpc":             map[string]any{"address": e.Socket},
		"ttrpc":            map[string]any{"address": e.TTRPCSocket},
		"debug":            map[string]any{"level": level},
	}
}

// containerdConfig returns containerd 2.x's configuration (version 3).
// Everything containerd would otherwise keep in a machine-wide place points
// into the Env's directory, but the shims' sockets before 2.3 (see
// shimSocketDirLegacy).
func (e *Env) containerdConfig(opts Options) (map[string]any, error) {
	storepkg, err := e.storepkgRuntime(opts)
	if err != nil {
		return nil, err
	}
	level := e.logLevel(opts)
	shimEnv := opts.ShimEnv
	if shimEnv == nil {
		shimEnv = []string{}
	}

	cfg := e.baseConfig(3, level, "io.containerd.snapshotter.v1.erofs")
	cfg["plugins"] = map[string]any{
		// containerd's own scratch dir, else /opt/containerd.
		"io.containerd.internal.v1.opt": map[string]any{"path": filepath.Join(e.Dir, "opt")},
		"io.containerd.image-verifier.v1.bindir": map[string]any{
			"bin_dir": filepath.Join(e.Dir, "image-verifier"),
		},
		"io.containerd.nri.v1.nri": map[string]any{"disable": true},
		// Else every containerd of the machine shares /run/containerd/s.
		"io.containerd.shim.v1.manager": map[string]any{
			"socket_dir": e.ShimSocketDir,
			"env":        shimEnv,
		},
		"io.containerd.grpc.v1.cri": map[string]any{
			"disable_tcp_service":   true,
			"stream_server_address": "127.0.0.1",
			"stream_server_port":    "0",
		},
		"io.containerd.cri.v1.images": map[string]any{
			"snapshotter":   "overlayfs",
			"pinned_images": map[string]any{"sandbox": PauseImage},
			"registry":      map[string]any{"config_path": ""},
		},
		"io.containerd.cri.v1.runtime": map[string]any{
			// No CAP_SYS_RESOURCE here: CRI's -998 for the sandbox would
			// make runc fail ("can't get final child's PID from pipe").
			"restrict_oom_score_adj":       true,
			"netns_mounts_under_state_dir": true,
			// No CDI specs of the machine (/etc/cdi, /var/run/cdi).
			"cdi_spec_dirs": []string{},
			"containerd": map[string]any{
				"default_runtime_name": HandlerRunc,
				"runtimes": map[string]any{
					HandlerRunc: map[string]any{
						"runtime_type": "io.containerd.runc.v2",
						"runtime_path": e.tools.shimRunc,
						"sandboxer":    "podsandbox",
						"options": map[string]any{
							"BinaryName":    e.tools.runc,
							"Root":          e.RuncRoot,
							"SystemdCgroup": false,
						},
					},
					HandlerStorepkg: storepkg,
				},
			},
			"cni": map[string]any{
				"bin_dirs":     []string{e.tools.cniBinDir},
				"conf_dir":     e.cniConfDir(),
				"max_conf_num": 1,
			},
		},
	}
	if len(opts.RegistryHosts) > 0 {
		dir, err := e.writeRegistryHosts(opts.RegistryHosts)
		if err != nil {
			return nil, err
		}
		images := cfg["plugins"].(map[string]any)["io.containerd.cri.v1.images"].(map[string]any)
		images["registry"] = map[string]any{"config_path": dir}
	}
	plugins := cfg["plugins"].(map[string]any)
	runtime := plugins["io.containerd.cri.v1.runtime"].(map[string]any)
	if !e.gen.bootstrap {
		// No socket_dir before 2.3: the shims' sockets are in
		// /run/containerd/s (removeShimSockets cleans them up). And the
		// runc shim of ContainerdVersion cannot answer their `start`.
		plugins["io.containerd.shim.v1.manager"] = map[string]any{"env": shimEnv}
		runtime["containerd"] = map[string]any{
			"default_runtime_name": HandlerStorepkg,
			"runtimes":             map[string]any{HandlerStorepkg: storepkg},
		}
	}
	if !e.gen.cniBinDirs {
		cni := runtime["cni"].(map[string]any)
		delete(cni, "bin_dirs")
		cni["bin_dir"] = e.tools.cniBinDir
	}
	if opts.Config != nil {
		opts.Config(cfg)
	}
	return cfg, nil
}

// logLevel is containerd's log level: debug when asked for.
func (e *Env) logLevel(opts Options) string {
	if opts.Debug || os.Getenv("STOREPKG_CRITEST_DEBUG") == "1" {
		return "debug"
	}
	return "info"
}

// storepkgRuntime returns the storepkg runtime's table, the same in both
// configuration versions (sandboxer is ignored by containerd 1.7).
func (e *Env) storepkgRuntime(opts Options) (map[string]any, error) {
	storepkgOptions, err := e.storepkgOptions(opts)
	if err != nil {
		return nil, err
	}
	storepkg := map[string]any{
		"runtime_type":    StorepkgRuntimeType,
		"pod_annotations": []string{"storepkg.dev/*"},
	}
	if e.gen.configVersion >= 3 {
		storepkg["sandboxer"] = "podsandbox"
	}
	if opts.ShimPath != "" {
		if !filepath.IsAbs(opts.ShimPath) {
			return nil, fmt.Errorf("ShimPath %q is not absolute", opts.ShimPath)
		}
		storepkg["runtime_path"] = opts.ShimPath
	}
	storepkg["options"] = storepkgOptions
	return storepkg, nil
}

// writeRegistryHosts writes Dir/certs.d/<host>/hosts.toml for each host:
// pull and resolve from its plain-HTTP URL, and returns the certs.d dir.
func (e *Env) writeRegistryHosts(hosts map[string]string) (string, error) {
	root := filepath.Join(e.Dir, "certs.d")
	for host, url := range hosts {
		if !strings.HasPrefix(url, "http://") {
			return "", fmt.Errorf("RegistryHosts[%q] = %q: want an http:// URL", host, url)
		}
		dir := filepath.Join(root, host)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
		conf := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", url, url)
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(conf), 0o600); err != nil {
			return "", err
		}
	}
	return root, nil
}

// NoSubstituter is the storepkg runtime's substituter when a test names
// none: a loopback port nothing listens on, so a shim never falls back to
// a public cache.
const NoSubstituter = "http://127.0.0.1:1"

// storepkgOptions merges Options.StorepkgOptionsTOML and StorepkgOptions,
// and fills in what keeps the shim inside this Env: runc's binary and root,
// a store under Dir, no reachable substituter.
func (e *Env) storepkgOptions(opts Options) (map[string]any, error) {
	merged := map[string]any{}
	if strings.TrimSpace(opts.StorepkgOptionsTOML) != "" {
		if err := toml.Unmarshal([]byte(opts.StorepkgOptionsTOML), &merged); err != nil {
			return nil, fmt.Errorf("StorepkgOptionsTOML: %w", err)
		}
	}
	maps.Copy(merged, opts.StorepkgOptions)
	defaults := map[string]any{
		"BinaryName":    e.tools.runc,
		"Root":          e.RuncRoot,
		"SystemdCgroup": false,
		"StoreRoot":     e.StoreRoot,
		"StatusDir":     e.StatusDir,
		"FetchSlotsDir": e.FetchSlotsDir,
		"Substituters":  []string{NoSubstituter},
		// Not the node's /run/storepkg/peers/peers.json: no peers
		// unless a test gives its own file.
		"PeersFile": "",
	}
	for k, v := range defaults {
		if _, ok := merged[k]; !ok {
			merged[k] = v
		}
	}
	return merged, nil
}

func writeTOML(path string, v any) error {
	data, err := toml.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return os.WriteFile(path, data, 0o600)
}

func (e *Env) cniConfDir() string { return filepath.Join(e.Dir, "cni", "net.d") }

// writeCNIConfig writes the bridge network: host-local IPAM on the Env's
// private /24, the host as gateway, no masquerading and no default route,
// so pods reach only this machine's bridge.
func (e *Env) writeCNIConfig() error {
	n := e.Network
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       n.Name,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      n.Bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": n.Subnet.String(), "gateway": n.Gateway.String()}}},
					"dataDir": filepath.Join(e.Dir, "cni", "ipam"),
				},
			},
		},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(e.cniConfDir(), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(e.cniConfDir(), "10-"+n.Name+".conflist"), data, 0o644)
}

// writeCrictlConfig writes crictl's config: both endpoints on Socket, no
// image pulls, the request timeout.
func (e *Env) writeCrictlConfig() error {
	endpoint := "unix://" + e.Socket
	conf := fmt.Sprintf("runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: %d\ndebug: false\npull-image-on-create: false\ndisable-pull-on-run: true\n",
		endpoint, endpoint, int(e.crictlTimeout.Seconds()))
	return os.WriteFile(e.crictlConfig, []byte(conf), 0o600)
}

// criReady tells whether `crictl info` reports RuntimeReady and NetworkReady.
func criReady(info string) bool {
	var v struct {
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status bool   `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return false
	}
	ready := map[string]bool{}
	for _, c := range v.Status.Conditions {
		ready[c.Type] = c.Status
	}
	return ready["RuntimeReady"] && ready["NetworkReady"]
}

// RuntimeConfig returns the table of a runtime handler in a containerd
// configuration (version 3, or version 2 for containerd 1.7), for
// Options.Config to change, e.g.
//
//	Config: func(c map[string]any) { delete(critest.RuntimeConfig(c, critest.HandlerStorepkg), "options") }
func RuntimeConfig(config map[string]any, handler string) map[string]any {
	plugins, _ := config["plugins"].(map[string]any)
	runtime, _ := plugins["io.containerd.cri.v1.runtime"].(map[string]any)
	if runtime == nil {
		runtime, _ = plugins["io.containerd.grpc.v1.cri"].(map[string]any)
	}
	containerd, _ := runtime["containerd"].(map[string]any)
	runtimes, _ := containerd["runtimes"].(map[string]any)
	table, _ := runtimes[handler].(map[string]any)
	return table
}
