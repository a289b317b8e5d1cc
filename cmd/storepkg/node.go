package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/nodeinstall"
)

func newNodeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Install or uninstall the storepkg runtime on this node",
		Long: `node install and node uninstall set a node up for RuntimeClass storepkg: the
shim and this CLI under /opt/storepkg/bin, the node config the shim reads
(/etc/storepkg/config.toml), and the storepkg runtime in containerd's
config (a drop-in where containerd merges one safely, else a marked block;
k3s and rke2 through their config templates), then a containerd restart.

The installer DaemonSet runs them with the host's root mounted (--host-root)
and the host's PID namespace: commands on the host (containerd --version,
systemctl) run through nsenter into PID 1's namespaces.`,
	}
	cmd.AddCommand(newNodeInstallCommand(), newNodeUninstallCommand())
	return cmd
}

// nodeFlags are the flags install and uninstall share.
type nodeFlags struct {
	hostRoot, containerdConfig, containerdVersion, restart string
	labelNode, kubeconfig                                  string
	dryRun                                                 bool
}

func (f *nodeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.hostRoot, "host-root", "/", "where the host's root directory is mounted")
	cmd.Flags().StringVar(&f.containerdConfig, "containerd-config", "", "containerd's root config, a host path (default: detect k3s, rke2, else /etc/containerd/config.toml)")
	cmd.Flags().StringVar(&f.containerdVersion, "containerd-version", "", "containerd's version, instead of asking the host's containerd --version")
	cmd.Flags().StringVar(&f.restart, "restart", nodeinstall.RestartAuto, "how to restart containerd: auto, systemd, k3s, rke2, none or command:<shell command run on the host>")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "show what would change, change nothing")
	cmd.Flags().StringVar(&f.labelNode, "label-node", os.Getenv("NODE_NAME"), "Kubernetes node to label "+nodeinstall.ReadyLabel+"=true once the runtime answers (removed on uninstall); default $NODE_NAME, empty: no labelling")
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for labelling (default: the pod's in-cluster service account)")
}

func (f *nodeFlags) installer(cmd *cobra.Command) (*nodeinstall.Installer, error) {
	if err := nodeinstall.ValidRestart(f.restart); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(f.hostRoot)
	if err != nil {
		return nil, err
	}
	var label nodeinstall.NodeLabeler
	if f.labelNode != "" && !f.dryRun {
		client, err := kubeClient(f.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--label-node %s: %w", f.labelNode, err)
		}
		label = nodeinstall.KubeNodeLabeler(client, f.labelNode)
	}
	return &nodeinstall.Installer{
		Label: label,
		Options: nodeinstall.Options{
			HostRoot:          root,
			ContainerdConfig:  f.containerdConfig,
			ContainerdVersion: f.containerdVersion,
			// In a pod, enter the host's namespaces; on the host itself,
			// just run.
			Runner: nodeinstall.HostRunner{Root: root, Nsenter: root != "/"},
		},
		Restart: f.restart,
		DryRun:  f.dryRun,
		Out:     cmd.OutOrStdout(),
	}, nil
}

func newNodeInstallCommand() *cobra.Command {
	var (
		flags        nodeFlags
		substituters []string
		keys         []string
		storeRoot    string
		netrcFile    string
		maxJobs      int
		fetchTimeout string
		binaries     string
		wait         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "install [flags]",
		Short: "Add the storepkg runtime to this node's containerd",
		Long: `install copies containerd-shim-storepkg-v1 and storepkg from --binaries (the
directory of this executable: the shim sits beside it in the installer
image) to /opt/storepkg/bin, writes /etc/storepkg/config.toml, adds the
storepkg runtime to containerd's config, restarts containerd and waits
until containerd's CRI plugin serves the storepkg runtime. It prints every
change. Run again, it changes nothing and restarts nothing.

Without --substituter the node uses https://cache.nixos.org and its key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := flags.installer(cmd)
			if err != nil {
				return err
			}
			// The DaemonSet passes the node config through the
			// environment (a ConfigMap): flags win where both are given.
			if !cmd.Flags().Changed("substituter") {
				substituters = strings.Fields(os.Getenv("STOREPKG_SUBSTITUTERS"))
			}
			if !cmd.Flags().Changed("trusted-public-key") {
				keys = strings.Fields(os.Getenv("STOREPKG_TRUSTED_PUBLIC_KEYS"))
			}
			if len(substituters) == 0 {
				substituters = []string{fetch.DefaultSubstituter}
				if len(keys) == 0 {
					keys = []string{fetch.DefaultPublicKey}
				}
			}
			if binaries == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("--binaries: %w", err)
				}
				if exe, err = filepath.EvalSymlinks(exe); err != nil {
					return fmt.Errorf("--binaries: %w", err)
				}
				binaries = filepath.Dir(exe)
			}
			in.Substituters, in.TrustedPublicKeys = substituters, keys
			in.StoreRoot, in.NetrcFile, in.MaxJobs, in.FetchTimeout = storeRoot, netrcFile, maxJobs, fetchTimeout
			in.SourceDir = binaries
			in.WaitTimeout = wait
			return in.Install(cmd.Context())
		},
	}
	flags.register(cmd)
	cmd.Flags().StringArrayVar(&substituters, "substituter", nil, "binary cache URL, in priority order (repeatable; default $STOREPKG_SUBSTITUTERS, space separated)")
	cmd.Flags().StringArrayVar(&keys, "trusted-public-key", nil, "trusted signing key NAME:BASE64 (repeatable; default $STOREPKG_TRUSTED_PUBLIC_KEYS, space separated)")
	cmd.Flags().StringVar(&storeRoot, "store-root", "/", "the node's store is <store-root>/nix/store")
	cmd.Flags().StringVar(&netrcFile, "netrc-file", "", "credentials for private caches (a host path)")
	cmd.Flags().IntVar(&maxJobs, "max-jobs", 0, "parallel downloads (0: the shim's default)")
	cmd.Flags().StringVar(&fetchTimeout, "fetch-timeout", "", "how long one closure may take, a Go duration (default: the shim's, 30m)")
	cmd.Flags().StringVar(&binaries, "binaries", "", "directory holding storepkg and containerd-shim-storepkg-v1 (default: this executable's)")
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the runtime to answer after the restart")
	return cmd
}

func newNodeUninstallCommand() *cobra.Command {
	var flags nodeFlags
	cmd := &cobra.Command{
		Use:   "uninstall [flags]",
		Short: "Take the storepkg runtime off this node's containerd",
		Long: `uninstall removes what install added: the runtime entry (a config file
install edited is restored byte for byte from its backup, unless it changed
since: then only storepkg's lines go and the backup stays), the drop-in, the
node config and the binaries, then restarts containerd. Drain pods of
RuntimeClass storepkg from the node first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := flags.installer(cmd)
			if err != nil {
				return err
			}
			return in.Uninstall(cmd.Context())
		},
	}
	flags.register(cmd)
	return cmd
}
