# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Shared by the hack/kind scripts: versions, paths and small helpers.
# Sourced, never run. Every script that sources it sets LOG_PREFIX first.
#
# The versions below go together: kubeadm $K8S_VERSION asks for the etcd,
# CoreDNS and pause tags these build (node-image.sh checks them against
# `kubeadm config images list`), and kind $KIND_VERSION supports it.

KIND_VERSION=v0.31.0
K8S_VERSION=v1.34.4
# containerd and crictl share their tool directories with hack/install-deps.sh
# (same names, same layout): keep these in step with it.
CONTAINERD_VERSION=v2.3.4
CRICTL_VERSION=v1.34.0
ETCD_VERSION=v3.6.5
COREDNS_VERSION=v1.12.1
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Go tools, one directory per name and version (see deps.sh).
TOOLS_DIR=${STOREPKG_TOOLS:-/var/cache/storepkg/tools}
KIND_BIN=$TOOLS_DIR/kind-$KIND_VERSION
K8S_BIN=$TOOLS_DIR/kubernetes-$K8S_VERSION
CONTAINERD_BIN=$TOOLS_DIR/containerd-$CONTAINERD_VERSION
CRICTL_BIN=$TOOLS_DIR/crictl-$CRICTL_VERSION
ETCD_BIN=$TOOLS_DIR/etcd-$ETCD_VERSION
COREDNS_BIN=$TOOLS_DIR/coredns-$COREDNS_VERSION

# Build inputs that are slow to make and safe to keep (the debootstrap
# rootfs), and each cluster's kubeconfig (clusters/NAME/kubeconfig).
KIND_CACHE=${STOREPKG_KIND_CACHE:-/var/cache/storepkg/kind}

# The script-started Docker engine (docker.sh). Its data root persists so
# node images survive between runs; its runtime state lives under /run.
DOCKER_DATA_ROOT=${STOREPKG_DOCKER_DATA_ROOT:-/var/lib/storepkg-docker}
DOCKER_STATE_DIR=${STOREPKG_DOCKER_STATE_DIR:-/run/storepkg-docker}
DOCKER_SOCK=$DOCKER_STATE_DIR/docker.sock
DOCKER_PIDFILE=$DOCKER_STATE_DIR/dockerd.pid
export DOCKER_HOST=unix://$DOCKER_SOCK

# The docker network kind puts its nodes on. cluster.sh creates it with a
# fixed subnet, so the host is always at $KIND_GATEWAY from the nodes (kind
# reuses an existing network called "kind").
KIND_NETWORK=kind
KIND_SUBNET=${STOREPKG_KIND_SUBNET:-172.30.0.0/24}
KIND_GATEWAY=${STOREPKG_KIND_GATEWAY:-172.30.0.1}
KIND_BRIDGE=storepkg-kind

# The node image repository; node-image.sh tags it
# $NODE_IMAGE_REPO:$K8S_VERSION-<hash of its inputs>.
NODE_IMAGE_REPO=storepkg.dev/kind-node

# log, die, retry, install_apt, nix_run: the helpers of every hack script.
# shellcheck source=hack/lib.sh
. "$KIND_DIR/../lib.sh"

# real_docker is the docker client the scripts call: Debian's, which matches
# its dockerd, else any.
real_docker() {
  local d
  for d in /usr/bin/docker /usr/local/bin/docker; do
    [[ -x $d ]] && {
      echo "$d"
      return
    }
  done
  die "no docker client (run hack/kind/deps.sh)"
}

docker() { "$(real_docker)" "$@"; }

# docker_running tells whether the script-started dockerd answers.
docker_running() { docker version >/dev/null 2>&1; }

# kind_path puts the docker wrapper (see docker-wrapper/docker) and the
# Kubernetes tools first on PATH, for kind and kubectl.
kind_path() {
  export PATH="$KIND_DIR/docker-wrapper:$KIND_BIN:$K8S_BIN:$PATH"
}

# run_logged LOGFILE CMD...: runs CMD with its output in LOGFILE and shows
# the end of the log only when it fails.
run_logged() {
  local logfile=$1
  shift
  if ! "$@" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    log "failed: $* (log: $logfile)"
    return 1
  fi
}
