#!/usr/bin/env bash
# Creates and deletes kind clusters on the node image built offline by
# node-image.sh, in the dockerd of docker.sh.
#
#   hack/kind/cluster.sh create NAME [CONFIG]  create the cluster (default config:
#                                              hack/kind/cluster.yaml), wait until every
#                                              node and kube-system workload is ready,
#                                              print the kubeconfig path
#   hack/kind/cluster.sh delete NAME           delete it and what it leaves behind
#   hack/kind/cluster.sh kubeconfig NAME       print its kubeconfig path
#   hack/kind/cluster.sh env NAME              print exports for a shell: KUBECONFIG,
#                                              DOCKER_HOST, PATH with kind and kubectl
#   hack/kind/cluster.sh host-ip               print the host's address as the nodes see it
#
# create brings up whatever is missing first (tools, dockerd, node image:
# kind's stock one where it can be pulled, else built offline, see
# node_image),
# so it is the one command a test needs. When it fails it saves the
# cluster's logs (`kind export logs`, into $ARTIFACTS, else
# /var/cache/storepkg/kind/logs, as kind-logs-NAME), deletes the cluster
# and stops dockerd if it started it.
set -o errexit -o nounset -o pipefail

LOG_PREFIX="kind-cluster"
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

READY_TIMEOUT=${STOREPKG_KIND_READY_TIMEOUT:-240s}

# kind runs `docker` from PATH: give it the wrapper (see docker-wrapper/docker).
kind_path

cluster_dir() { echo "$KIND_CACHE/clusters/$1"; }
kubeconfig_path() { echo "$(cluster_dir "$1")/kubeconfig"; }

kind() { "$KIND_BIN/kind" "$@"; }
kubectl() { "$K8S_BIN/kubectl" "$@"; }

cluster_exists() {
  docker_running && kind get clusters 2>/dev/null | grep -qx -- "$1"
}

# ensure_network makes the docker network kind puts nodes on, with a fixed
# subnet and bridge name, so the host is at $KIND_GATEWAY from every node.
# kind uses an existing network of that name as it is.
ensure_network() {
  local subnet
  if subnet=$(docker network inspect "$KIND_NETWORK" -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null); then
    [[ " $subnet " == *" $KIND_SUBNET "* ]] && return 0
    if [[ -n $(docker network inspect "$KIND_NETWORK" -f '{{range .Containers}}{{.Name}} {{end}}') ]]; then
      log "network $KIND_NETWORK has subnet $subnet, not $KIND_SUBNET, and is in use: keeping it"
      return 0
    fi
    docker network rm "$KIND_NETWORK" >/dev/null
  fi
  docker network create --driver bridge \
    --subnet "$KIND_SUBNET" --gateway "$KIND_GATEWAY" \
    -o com.docker.network.bridge.name="$KIND_BRIDGE" \
    -o com.docker.network.bridge.enable_ip_masquerade=true \
    "$KIND_NETWORK" >/dev/null
  log "created docker network $KIND_NETWORK ($KIND_SUBNET, host at $KIND_GATEWAY on $KIND_BRIDGE)"
}

# remove_network_if_unused removes the kind network once no container uses
# it (docker then removes its bridge and iptables rules).
remove_network_if_unused() {
  docker network inspect "$KIND_NETWORK" >/dev/null 2>&1 || return 0
  [[ -z $(docker network inspect "$KIND_NETWORK" -f '{{range .Containers}}{{.Name}} {{end}}') ]] || return 0
  docker network rm "$KIND_NETWORK" >/dev/null && log "removed docker network $KIND_NETWORK"
}

# wait_ready NAME: every node Ready, then the kube-system workloads
# (CoreDNS, kube-proxy, kindnet-lite) rolled out. `kind create --wait` only
# waits for the control plane.
wait_ready() {
  local kc
  kc=$(kubeconfig_path "$1")
  kubectl --kubeconfig "$kc" wait --for=condition=Ready nodes --all --timeout="$READY_TIMEOUT" >/dev/null
  kubectl --kubeconfig "$kc" -n kube-system rollout status daemonset/kube-proxy --timeout="$READY_TIMEOUT" >/dev/null
  kubectl --kubeconfig "$kc" -n kube-system rollout status daemonset/kindnet --timeout="$READY_TIMEOUT" >/dev/null
  kubectl --kubeconfig "$kc" -n kube-system rollout status deployment/coredns --timeout="$READY_TIMEOUT" >/dev/null
}

CREATING=
STARTED_DOCKER=

on_create_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  if [[ -n $CREATING ]] && docker_running; then
    local logs=${ARTIFACTS:-$KIND_CACHE/logs}/kind-logs-$CREATING
    rm -rf "$logs"
    log "create failed: saving the cluster's logs to $logs"
    kind export logs "$logs" --name "$CREATING" >/dev/null 2>&1 || true
    delete "$CREATING" || true
  fi
  if [[ -n $STARTED_DOCKER ]]; then
    "$KIND_DIR/docker.sh" stop || true
  fi
  log "create failed"
}

# kind v0.31.0's own default node image.
KIND_STOCK_IMAGE=kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f

# node_image prints the node image to use: $STOREPKG_KIND_NODE_IMAGE when
# set; else kind's stock image when it is present or can be pulled (a
# machine with internet; offline the pull fails at once); else the image
# node-image.sh builds offline. STOREPKG_KIND_NODE_IMAGE=local skips the
# stock image.
node_image() {
  case ${STOREPKG_KIND_NODE_IMAGE:-} in
  local) ;;
  "")
    if docker image inspect "$KIND_STOCK_IMAGE" >/dev/null 2>&1 ||
      timeout 120 docker pull -q "$KIND_STOCK_IMAGE" >/dev/null 2>&1; then
      log "using kind's stock node image $KIND_STOCK_IMAGE"
      echo "$KIND_STOCK_IMAGE"
      return
    fi
    log "kind's stock node image cannot be pulled here: building one offline"
    ;;
  *)
    echo "$STOREPKG_KIND_NODE_IMAGE"
    return
    ;;
  esac
  "$KIND_DIR/node-image.sh"
}

create() {
  local name=$1 config=${2:-$KIND_DIR/cluster.yaml}
  [[ -f $config ]] || die "no cluster config $config"
  config=$(realpath "$config")
  is_root || die "needs root (dockerd, node image)"
  trap on_create_exit EXIT

  "$KIND_DIR/deps.sh" >/dev/null
  docker_running || STARTED_DOCKER=1
  "$KIND_DIR/docker.sh" start
  local image
  image=$(node_image)
  if cluster_exists "$name"; then
    die "cluster $name exists: delete it first (hack/kind/cluster.sh delete $name)"
  fi
  ensure_network

  local dir kc start=$SECONDS
  dir=$(cluster_dir "$name")
  kc=$(kubeconfig_path "$name")
  mkdir -p "$dir"
  rm -f "$kc"
  log "creating cluster $name from $image with $config"
  CREATING=$name
  # --retain: on failure keep the nodes for `kind export logs` (the trap
  # deletes them after).
  run_logged "$dir/create.log" "$KIND_BIN/kind" create cluster --name "$name" --image "$image" \
    --config "$config" --kubeconfig "$kc" --retain --wait 3m
  local created=$SECONDS
  wait_ready "$name"
  CREATING=
  log "cluster $name is ready: kind create took $((created - start))s, nodes and kube-system ready $((SECONDS - created))s later ($((SECONDS - start))s in all)"
  kubectl --kubeconfig "$kc" get nodes -o wide >&2
  echo "$kc"
}

delete() {
  local name=$1
  if docker_running; then
    if cluster_exists "$name"; then
      log "deleting cluster $name"
      kind delete cluster --name "$name" >/dev/null 2>&1 || log "kind delete cluster $name failed; removing its containers"
    fi
    # Whatever kind did not remove: the cluster's node containers, with
    # their anonymous volumes.
    local leftovers
    leftovers=$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")
    if [[ -n $leftovers ]]; then
      # shellcheck disable=SC2086
      docker rm -f -v $leftovers >/dev/null
    fi
    remove_network_if_unused
  fi
  rm -rf "$(cluster_dir "$name")"
}

kubeconfig() {
  local name=$1 kc
  kc=$(kubeconfig_path "$name")
  cluster_exists "$name" || die "no cluster $name (is dockerd running? hack/kind/docker.sh status)"
  # Rewrite it in case it went missing; kind's endpoint does not change.
  mkdir -p "$(dirname "$kc")"
  kind get kubeconfig --name "$name" >"$kc.tmp"
  mv "$kc.tmp" "$kc"
  echo "$kc"
}

cluster_env() {
  local name=$1
  cat <<EOF
export KUBECONFIG=$(kubeconfig_path "$name")
export DOCKER_HOST=$DOCKER_HOST
export PATH=$KIND_DIR/docker-wrapper:$KIND_BIN:$K8S_BIN:\$PATH
EOF
}

host_ip() {
  local gw=
  if docker_running; then
    gw=$(docker network inspect "$KIND_NETWORK" -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' 2>/dev/null || true)
  fi
  gw=${gw%% *}
  echo "${gw:-$KIND_GATEWAY}"
}

usage() {
  sed -n '/^#   hack/,/^#$/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  create)
    (($# == 2 || $# == 3)) || usage
    create "$2" "${3:-}"
    ;;
  delete)
    (($# == 2)) || usage
    delete "$2"
    ;;
  kubeconfig)
    (($# == 2)) || usage
    kubeconfig "$2"
    ;;
  env)
    (($# == 2)) || usage
    cluster_env "$2"
    ;;
  host-ip) host_ip ;;
  *) usage ;;
esac
