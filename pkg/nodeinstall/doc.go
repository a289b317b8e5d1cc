// Package nodeinstall puts storepkg on a Kubernetes node and takes it off
// again: it copies the shim and the CLI onto the host, writes the node
// configuration the shim reads, registers the `storepkg` runtime in
// containerd's configuration, restarts containerd and, once the runtime
// answers over CRI, lets the caller label the node.
//
// It runs from a DaemonSet pod that has the host's root directory mounted
// somewhere (Options.HostRoot) and the host's PID namespace (commands on
// the host run through nsenter into PID 1's namespaces, see HostRunner).
// Every path in this package's API is a path as the host sees it.
//
// # Host paths and symbolic links
//
// The package never joins a host path to HostRoot and hands it to the os
// package: the kernel would follow an absolute link (NixOS's
// /etc/containerd/config.toml -> /etc/static/...) in the installer's own
// file system, where it reads as absent and a write lands in the
// container. Every path it reads, writes, creates, renames or removes is
// resolved inside HostRoot as the host resolves it, absolute links from
// HostRoot and `..` stopping there: openat2 with RESOLVE_IN_ROOT, or
// github.com/cyphar/filepath-securejoin's user-space walk on kernels
// without it (see hostFS).
//
// A file that is a symbolic link is edited where it really lives, at the
// link's target, and the link stays as it is; its backup sits beside the
// target, and uninstall restores the target's bytes. The plan refuses,
// naming the link and its target, a link whose target does not exist
// (nothing is ever created over a link) and a target it cannot write: in
// the Nix store (NixOS generates containerd's config there) or on a
// read-only mount. Directories on the way may be links too (/opt ->
// /var/opt); files are created in their targets.
//
// # Where the runtime entry goes
//
// containerd reads one root configuration file and the files its `imports`
// name (globs allowed, each imported file may import more). How an import
// is merged differs by release, and that decides where our entry can go:
//
//   - containerd 2.x merges imported plugin tables key by key, and refuses
//     an import whose `version` is higher than the root file's. There we
//     write a drop-in file with the root's version, next to the others the
//     root already imports (containerd 2.3's default config imports
//     /etc/containerd/conf.d/*.toml, k3s and rke2 render an import of
//     config-v3.toml.d/*.toml), or, when no import fits, add the drop-in's
//     path to the root file's `imports`.
//   - containerd 1.7 replaces a whole plugin table with the imported one:
//     a drop-in defining only `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.storepkg]`
//     silently resets every other CRI setting of the node (sandbox image,
//     runc's SystemdCgroup, ...) to containerd's defaults. So on 1.7 (and
//     whenever the major version cannot be told, with a version 2 root
//     file) the entry is appended to the root file itself, between marker
//     comments. Also on 1.7, a file that names any runtime drops the built-in
//     `runc` runtime (the runtimes map is decoded afresh), so when the
//     effective configuration relies on the built-in runc, the block names
//     runc explicitly with its default settings.
//   - k3s and rke2 render containerd's config.toml from a template on every
//     start, so editing config.toml is pointless. Newer releases render an
//     import of config-v3.toml.d/*.toml (or config.toml.d/*.toml for a
//     version 2 config): we use that. Older ones get our block appended to
//     the template k3s uses (config-v3.toml.tmpl, else config.toml.tmpl,
//     the same order k3s tries); when there is none we create one that
//     starts with `{{ template "base" . }}`, k3s's built-in template.
//
// A root configuration of version 1 (or without `version`, which containerd
// reads as 1) is refused: its plugin names differ (`cri`, not
// `io.containerd.grpc.v1.cri`), containerd 2.0 removed it, and migrating
// an operator's whole configuration is not an installer's call. The error
// says how to migrate.
//
// Any file edited in place is backed up once, before the first edit, as
// <file>.storepkg-backup (beside a link's target, for a link). Uninstall removes exactly what install added and
// compares the result with that backup: when they match the file is back
// byte for byte and the backup goes; when the operator changed the file in
// between, their changes stay and so does the backup.
//
// Another definition of runtimes.storepkg anywhere in the files containerd
// loads (the root file, any import, before or after ours) is refused as a
// conflict, since whichever containerd merges last silently wins; so is, on
// 1.7, an import that defines the CRI plugin table at all, because it
// would replace the root's table and our entry with it.
//
// # The runtime entry
//
//	[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.storepkg]
//	  runtime_type = "io.containerd.storepkg.v1"
//	  runtime_path = "/opt/storepkg/bin/containerd-shim-storepkg-v1"
//	  pod_annotations = ["storepkg.dev/*"]
//	  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.storepkg.options]
//	    ConfigPath = "/etc/storepkg/config.toml"
//
// The shim is installed under /opt/storepkg/bin and named by runtime_path
// rather than put on containerd's PATH: /usr/local/bin belongs to the
// operator (and is read-only on some node images), containerd's PATH
// differs between systemd units, k3s and rke2, and a directory of our own
// is removed cleanly. With ConfigPath set, containerd hands the shim only
// that path (the other option keys would be dropped), so the whole node
// configuration (caches, keys, store root, and runc's SystemdCgroup and
// BinaryName copied from the node's runc runtime so the cgroup driver
// matches the kubelet's) lives in that file, and the shim rereads it at
// every container create: changing caches needs no containerd restart.
package nodeinstall
