#!/usr/bin/env bash
# make demo: a pod runs straight from Nix store paths.
#
# Builds a small closure (busybox httpd and a web page) with Nix, offline;
# writes a signed binary cache and serves it on 127.0.0.1; starts a private
# containerd with the storepkg runtime; runs a pod whose only "image" is
# the pause placeholder and whose annotation names the store path; fetches
# the page from the pod; shows the container's view of /nix/store; then
# removes everything it made. Run as root.
set -o errexit -o nounset -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/spdemo.XXXXXX)   # short: containerd limits socket paths
CONTAINERD_PID="" HTTPD_PID="" POD="" FORWARD_BEFORE=""
BRIDGE=spdemo0
SUBNET=10.88.250
LOG_PREFIX=demo
# shellcheck source=hack/lib.sh
. "$REPO/hack/lib.sh"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
crictl() { command crictl --config "$WORK/crictl.yaml" --runtime-endpoint "unix://$WORK/containerd.sock" --image-endpoint "unix://$WORK/containerd.sock" --timeout 60s "$@"; }

cleanup() {
  set +o errexit
  step "Cleaning up"
  if [[ -n "$POD" ]]; then crictl stopp "$POD" >/dev/null; crictl rmp "$POD" >/dev/null; fi
  if [[ -n "$CONTAINERD_PID" ]]; then
    kill "$CONTAINERD_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$CONTAINERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$CONTAINERD_PID" 2>/dev/null
  fi
  [[ -n "$HTTPD_PID" ]] && kill "$HTTPD_PID" 2>/dev/null
  # Shims outlive containerd by design; stop the ones of this demo by PID.
  for pid in $(pgrep -f "$WORK" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  ip link del "$BRIDGE" 2>/dev/null
  [[ -n "$FORWARD_BEFORE" ]] && echo "$FORWARD_BEFORE" > /proc/sys/net/ipv4/ip_forward
  chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"
  echo "removed $WORK"
}
trap cleanup EXIT

prepare() {
  step "Installing what the demo needs and building storepkg"
  "$REPO/hack/install-deps.sh" demo
  # shellcheck disable=SC1091
  source "${STOREPKG_TOOLS:-/var/cache/storepkg/tools}/env.sh"
  make -C "$REPO" --no-print-directory build >/dev/null
  mkdir -p "$WORK/images"
  (cd "$REPO/integration" && go run ./cmd/images "$WORK/images" >/dev/null)
}

build_cache() {
  step "Building a closure with Nix, offline (busybox httpd + a page), and a signed cache"
  mkdir -p "$WORK/src/bb/bin"
  cp /bin/busybox "$WORK/src/bb/bin/busybox"
  ln -s busybox "$WORK/src/bb/bin/sh"
  ROOT_PATH=$(nix_run nix-build --store "local?root=$WORK/build" --option sandbox true --no-out-link \
    --arg busyboxSrc "$WORK/src/bb" "$REPO/hack/demo/closure.nix" 2>/dev/null)
  nix_run nix-store --store "local?root=$WORK/build" -qR "$ROOT_PATH"
  nix_run nix key generate-secret --key-name demo-cache-1 > "$WORK/secret-key"
  PUBLIC_KEY=$(nix_run nix key convert-secret-to-public < "$WORK/secret-key")
  nix_run nix copy --store "local?root=$WORK/build" \
    --to "file://$WORK/cache?compression=zstd&secret-key=$WORK/secret-key" "$ROOT_PATH" 2>/dev/null
  local port=$((20000 + RANDOM % 20000))
  busybox httpd -f -p "127.0.0.1:$port" -h "$WORK/cache" &
  HTTPD_PID=$!
  CACHE_URL="http://127.0.0.1:$port"
  echo "cache $CACHE_URL, signed by $PUBLIC_KEY"
}

start_containerd() {
  step "Starting containerd with the storepkg runtime (config: $WORK/containerd.toml)"
  mkdir -p "$WORK/cni/net.d" "$WORK/store"
  touch "$WORK/crictl.yaml"
  cat > "$WORK/containerd.toml" <<TOML
version = 3
root = "$WORK/root"
state = "$WORK/state"
imports = []
[grpc]
  address = "$WORK/containerd.sock"
[ttrpc]
  address = "$WORK/containerd.sock.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "$WORK/opt"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "$WORK/s"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'io.containerd.cri.v1.images']
  pinned_images = { sandbox = "registry.k8s.io/pause:3.10.1" }
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$WORK/cni/net.d"
  # The part a node needs: the storepkg runtime and its node configuration.
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.storepkg]
    runtime_type = "io.containerd.storepkg.v1"
    runtime_path = "$REPO/bin/containerd-shim-storepkg-v1"
    pod_annotations = ["storepkg.dev/*"]
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.storepkg.options]
      Substituters = ["$CACHE_URL"]
      TrustedPublicKeys = ["$PUBLIC_KEY"]
      StoreRoot = "$WORK/store"
      StatusDir = "$WORK/fetches"   # fetch records for the node agent (none runs in the demo)
      BinaryName = "$(command -v runc)"
      Root = "$WORK/runc"
      SystemdCgroup = false
TOML
  cat > "$WORK/cni/net.d/10-spdemo.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "spdemo", "plugins": [{"type": "bridge", "bridge": "$BRIDGE",
 "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "dataDir": "$WORK/cni/ipam",
 "ranges": [[{"subnet": "$SUBNET.0/24", "gateway": "$SUBNET.1"}]]}}]}
JSON
  FORWARD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)
  containerd --config "$WORK/containerd.toml" > "$WORK/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  for _ in $(seq 100); do [[ -S "$WORK/containerd.sock" ]] && break; sleep 0.1; done
  ctr --address "$WORK/containerd.sock" -n k8s.io images import --local "$WORK"/images/*.tar >/dev/null
}

run_pod() {
  step "Running a pod from the store path $ROOT_PATH"
  cat > "$WORK/pod.json" <<JSON
{"metadata": {"name": "web", "namespace": "default", "uid": "demo-web-1"},
 "annotations": {"storepkg.dev/paths": "$ROOT_PATH"}, "log_directory": "$WORK/logs"}
JSON
  cat > "$WORK/container.json" <<JSON
{"metadata": {"name": "httpd"}, "image": {"image": "registry.k8s.io/pause:3.10.1"},
 "command": ["demo-httpd"], "log_path": "httpd.log"}
JSON
  POD=$(crictl runp --runtime storepkg "$WORK/pod.json")
  local ctr
  ctr=$(crictl create "$POD" "$WORK/container.json" "$WORK/pod.json")
  crictl start "$ctr" >/dev/null
  crictl ps --pod "$POD"
  local ip
  ip=$(crictl inspectp -o go-template --template '{{.status.network.ip}}' "$POD")
  step "Fetching http://$ip:8080/ from the pod"
  local ok=""
  for _ in $(seq 50); do busybox wget -q -O - "http://$ip:8080/" 2>/dev/null && ok=1 && break; sleep 0.1; done
  if [[ -z "$ok" ]]; then crictl logs "$ctr"; echo "demo: the pod did not answer" >&2; exit 1; fi
  step "Inside the container, /nix/store holds only the closure, read-only"
  crictl exec "$ctr" busybox ls /nix/store
  if crictl exec "$ctr" busybox touch /nix/store/x 2>/dev/null; then
    echo "demo: /nix/store is writable in the container" >&2; exit 1
  fi
  echo "touch /nix/store/x: refused, read-only"
  step "The container's log"
  crictl logs "$ctr"
  step "The node store is a Nix store: real Nix verifies it"
  nix_run nix-store --store "local?root=$WORK/store" --verify --check-contents
  "$REPO/bin/storepkg" path-info --root "$WORK/store" -r "$ROOT_PATH" | grep '^/nix'
}

main() {
  prepare
  build_cache
  start_containerd
  run_pod
}

main "$@"
