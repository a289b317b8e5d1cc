package critest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// containerd17Config returns the configuration of containerd 1.7
// (version 2: CRI is the one plugin io.containerd.grpc.v1.cri, its runtimes
// under containerd.runtimes). As containerdConfig, everything points into
// the Env's directory, except the shims' sockets: 1.7 puts them in
// /run/containerd/s, named by a hash of containerd's address (so of Dir),
// and the shims remove them when they exit.
func (e *Env) containerd17Config(opts Options) (map[string]any, error) {
	storepkg, err := e.storepkgRuntime(opts)
	if err != nil {
		return nil, err
	}
	registry := map[string]any{"config_path": ""}
	if len(opts.RegistryHosts) > 0 {
		dir, err := e.writeRegistryHosts(opts.RegistryHosts)
		if err != nil {
			return nil, err
		}
		registry["config_path"] = dir
	}
	cfg := e.baseConfig(2, e.logLevel(opts))
	cfg["plugins"] = map[string]any{
		"io.containerd.internal.v1.opt": map[string]any{"path": filepath.Join(e.Dir, "opt")},
		"io.containerd.nri.v1.nri":      map[string]any{"disable": true},
		"io.containerd.grpc.v1.cri": map[string]any{
			"disable_tcp_service":          true,
			"stream_server_address":        "127.0.0.1",
			"stream_server_port":           "0",
			"sandbox_image":                PauseImage,
			"restrict_oom_score_adj":       true,
			"netns_mounts_under_state_dir": true,
			"enable_cdi":                   false,
			"cdi_spec_dirs":                []string{},
			"registry":                     registry,
			"containerd": map[string]any{
				"snapshotter": "overlayfs",
				// The runc shim of containerd 2 cannot serve 1.7: the
				// storepkg shim is the only runtime (and runs containers
				// without store paths unchanged).
				"default_runtime_name": HandlerStorepkg,
				"runtimes": map[string]any{
					HandlerStorepkg: storepkg,
				},
			},
			"cni": map[string]any{
				"bin_dir":      e.tools.cniBinDir,
				"conf_dir":     e.cniConfDir(),
				"max_conf_num": 1,
			},
		},
	}
	if opts.Config != nil {
		opts.Config(cfg)
	}
	return cfg, nil
}

// shimSocketDirLegacy is where containerd before 2.3 has its shims put
// their sockets.
const shimSocketDirLegacy = "/run/containerd/s"

func (e *Env) notePod(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.podIDs == nil {
		e.podIDs = map[string]bool{}
	}
	e.podIDs[id] = true
}

// removeShimSockets removes the sockets in /run/containerd/s of this
// Env's shims under a containerd before 2.3 (one per pod, named as runc's
// shim manager names them: the SHA-256 of
// "<containerd address>/<namespace>/<sandbox id>"[/debug]). A shim removes
// its own when it exits; one that was killed leaves it. Run after every
// shim of the Env is gone.
func (e *Env) removeShimSockets() error {
	if e.gen.bootstrap {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for id := range e.podIDs {
		p := filepath.Join(e.Socket, Namespace, id)
		for _, name := range []string{p, filepath.Join(p, "debug")} {
			sock := filepath.Join(shimSocketDirLegacy, fmt.Sprintf("%x", sha256.Sum256([]byte(name))))
			if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
