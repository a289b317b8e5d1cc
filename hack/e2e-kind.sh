#!/usr/bin/env bash
# make e2e: the user's acceptance test, on a real kind cluster (one control
# plane, two workers).
#
#  1. Builds storepkg's installer image (in Go) and two overlapping closures
#     with Nix, offline, into a signed binary cache served from the host on
#     the kind network's gateway, where the nodes reach it.
#  2. Brings up kind: kind's stock node image where it can be pulled; here,
#     offline, one built locally by hack/kind/ (same kind, same containerd
#     under systemd).
#  3. Installs storepkg the way a user does (kubectl apply -k of
#     examples/k8s/install with this cache in the node config) and waits for
#     storepkg.dev/ready=true on every node, containerd restarted through
#     systemd in each. With the agent's own token (read on its node):
#     its node's storepkg.dev/ready label may be patched, nothing else of
#     any node, and only storepkg's events naming its node posted; it may
#     read the peers' token Secret and create no other Secret; the agent
#     process has only the capabilities examples/k8s asks for. Every
#     node's peers file lists the three nodes, with the Secret's token.
#  4. Runs examples/k8s/workloads with these closures: the Job's output, the
#     server reached through its Service from a pod on the other node,
#     kubectl exec and logs; a pod with an unknown path shows the cause;
#     a Deployment with a pod on each node on a fresh closure, served by a
#     cache that counts what it serves, while one node's agent is killed:
#     the first rollout takes every NAR from the cache once (the nodes
#     share the rest, docs/peers.md), bytes are counted from peers, the pod
#     events say so, and the peer listener refuses a pod on another node;
#     with an agent killed the rollout completes, every NAR served at most
#     once per node; the agent's metrics answer.
#  5. Deletes everything and checks every node: no mounts, GC roots
#     released, store paths still valid (real Nix verifies the node store);
#     then `storepkg gc` in each agent's container (its privileges) frees them.
#  6. Uninstalls (examples/k8s/uninstall) and checks containerd's config is
#     byte-identical to before and the runtime is gone.
#
# Run as root. KEEP=1 leaves the cluster (and dockerd) up for poking;
# `hack/e2e-kind.sh down` removes them.
set -o errexit -o nounset -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=${CLUSTER:-storepkg-e2e}
WORK=""
HTTPD_PID=""
SLOW_PID=""
COUNT_PID=""
NODES=()
LOG_PREFIX=e2e
# shellcheck source=hack/lib.sh
. "$REPO/hack/lib.sh"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() {
  echo "e2e: FAIL: $*" >&2
  diagnostics
  exit 1
}

kubectl() { command kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }
node_exec() { docker exec "$1" "${@:2}"; }

diagnostics() {
  set +o errexit
  [[ -n "${KUBECONFIG_FILE:-}" && -f "${KUBECONFIG_FILE:-}" ]] || return 0
  echo "---- diagnostics" >&2
  kubectl get nodes -o wide --show-labels >&2
  kubectl get pods -A -o wide >&2
  kubectl -n storepkg-system logs -l app.kubernetes.io/name=storepkg-node -c install --tail=50 --prefix >&2
  kubectl -n storepkg-system logs -l app.kubernetes.io/name=storepkg-node -c agent --tail=30 --prefix >&2
  kubectl get events -A --sort-by=.lastTimestamp | tail -n 40 >&2
  for n in "${NODES[@]}"; do
    echo "---- $n: containerd journal" >&2
    node_exec "$n" journalctl -u containerd --no-pager -n 30 >&2
  done
  set -o errexit
}

cleanup() {
  local rc=$?
  set +o errexit
  [[ -n "$HTTPD_PID" ]] && kill "$HTTPD_PID" 2>/dev/null && wait "$HTTPD_PID" 2>/dev/null
  [[ -n "$SLOW_PID" ]] && kill "$SLOW_PID" 2>/dev/null && wait "$SLOW_PID" 2>/dev/null
  [[ -n "$COUNT_PID" ]] && kill "$COUNT_PID" 2>/dev/null && wait "$COUNT_PID" 2>/dev/null
  if [[ "${KEEP:-}" == 1 ]]; then
    log "KEEP=1: cluster $CLUSTER left up (kubeconfig ${KUBECONFIG_FILE:-}); cache server stopped"
  else
    "$REPO/hack/kind/cluster.sh" delete "$CLUSTER" >/dev/null 2>&1
    "$REPO/hack/kind/docker.sh" stop >/dev/null 2>&1
  fi
  [[ -n "$WORK" ]] && { chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"; }
  ((rc == 0)) && echo "e2e: PASS" >&2
  return $rc
}

# serves_storepkg NODE: 0 if containerd's CRI on NODE lists the storepkg
# runtime, 1 if not, 2 if crictl fails. The whole output is read first:
# a `| grep -q` that closes the pipe early fails the pipeline under pipefail.
serves_storepkg() {
  local info
  info=$(node_exec "$1" crictl info) || return 2
  grep -q '"storepkg"' <<<"$info"
}

prepare() {
  step "Installing what the e2e needs"
  "$REPO/hack/install-deps.sh" >/dev/null
  # shellcheck disable=SC1091
  source "${STOREPKG_TOOLS:-/var/cache/storepkg/tools}/env.sh"
  WORK=$(mktemp -d /tmp/spe2e.XXXXXX)
  step "Building the installer image (make image)"
  make -C "$REPO" --no-print-directory image >/dev/null
}

build_cache() {
  step "Building the example closures with Nix, offline, and a signed binary cache"
  mkdir -p "$WORK/src/bb/bin"
  cp /bin/busybox "$WORK/src/bb/bin/busybox"
  local a
  for a in sh ls cat echo mkdir sleep hostname httpd wget nc; do ln -s busybox "$WORK/src/bb/bin/$a"; done
  local build=(nix_run nix-build --store "local?root=$WORK/build" --option sandbox true --no-out-link
    --arg busyboxSrc "$WORK/src/bb" "$REPO/hack/e2e/closures.nix")
  HELLO=$("${build[@]}" -A hello 2>"$WORK/nix-build.log") &&
    SLEEPY=$("${build[@]}" -A sleepy 2>>"$WORK/nix-build.log") &&
    FRESH1=$("${build[@]}" -A fresh1 2>>"$WORK/nix-build.log") &&
    FRESH2=$("${build[@]}" -A fresh2 2>>"$WORK/nix-build.log") ||
    { cat "$WORK/nix-build.log" >&2; fail "nix-build of hack/e2e/closures.nix"; }
  # busybox is a source path (builtins.path), not a derivation: it is in
  # hello's closure.
  BUSYBOX=$(nix_run nix-store --store "local?root=$WORK/build" -qR "$HELLO" | grep -- '-busybox$')
  [[ "$BUSYBOX" == *-busybox && "$HELLO" == *-hello-storepkg && "$SLEEPY" == *-sleepy-storepkg ]] ||
    fail "unexpected build outputs: $BUSYBOX $HELLO $SLEEPY"
  nix_run nix key generate-secret --key-name e2e-cache-1 >"$WORK/secret-key"
  PUBLIC_KEY=$(nix_run nix key convert-secret-to-public <"$WORK/secret-key")
  nix_run nix copy --store "local?root=$WORK/build" \
    --to "file://$WORK/cache?compression=zstd&secret-key=$WORK/secret-key" "$BUSYBOX" "$HELLO" 2>/dev/null
  # A second cache, the only one with sleepy, answers NAR requests slowly.
  nix_run nix copy --store "local?root=$WORK/build" \
    --to "file://$WORK/slowcache?compression=zstd&secret-key=$WORK/secret-key" "$SLEEPY" 2>/dev/null
  # A third, the only one with the fresh closures, counts what it serves:
  # the cluster's uplink.
  nix_run nix copy --store "local?root=$WORK/build" \
    --to "file://$WORK/countcache?compression=zstd&secret-key=$WORK/secret-key" "$FRESH1" "$FRESH2" 2>/dev/null
  (cd "$REPO/integration" && go build -o "$WORK/slowcache-server" ./cmd/slowcache)
  log "busybox $BUSYBOX"
  log "hello   $HELLO"
  log "sleepy  $SLEEPY (slow cache only)"
  log "fresh1  $FRESH1, fresh2 $FRESH2 (counting cache only)"
}

start_cluster() {
  step "Starting kind cluster $CLUSTER (tools, dockerd and node image first if missing)"
  "$REPO/hack/kind/cluster.sh" delete "$CLUSTER" >/dev/null 2>&1 || true
  KUBECONFIG_FILE=$("$REPO/hack/kind/cluster.sh" create "$CLUSTER")
  # kind, kubectl and DOCKER_HOST of the script-started dockerd.
  eval "$("$REPO/hack/kind/cluster.sh" env "$CLUSTER")"
  mapfile -t NODES < <(kind get nodes --name "$CLUSTER" | sort)
  ((${#NODES[@]} == 3)) || fail "want 3 nodes, have: ${NODES[*]}"
  log "nodes: ${NODES[*]}"
}

serve_cache() {
  # The nodes are containers on docker's "kind" network: they reach the
  # host at the network's gateway. The cache listens there only.
  local gw port
  gw=$("$REPO/hack/kind/cluster.sh" host-ip)
  [[ -n "$gw" ]] || fail "no host address on the kind network"
  port=$((20000 + RANDOM % 20000))
  busybox httpd -f -p "$gw:$port" -h "$WORK/cache" &
  HTTPD_PID=$!
  CACHE_URL="http://$gw:$port"
  "$WORK/slowcache-server" -dir "$WORK/slowcache" -addr "$gw:$((port + 1))" -nar-delay 8s 2>"$WORK/slowcache.log" &
  SLOW_PID=$!
  SLOW_URL="http://$gw:$((port + 1))"
  # NARs held back 6s: the rollout is still fetching when an agent dies,
  # and every fetch is slow enough for a StorepkgFetched event.
  "$WORK/slowcache-server" -dir "$WORK/countcache" -addr "$gw:$((port + 2))" -nar-delay 6s 2>"$WORK/countcache.log" &
  COUNT_PID=$!
  COUNT_URL="http://$gw:$((port + 2))"
  retry 20 0.2 node_exec "${NODES[0]}" bash -c "exec 3<>/dev/tcp/$gw/$port" ||
    fail "nodes cannot reach the cache at $CACHE_URL"
  log "cache $CACHE_URL, slow cache $SLOW_URL, counting cache $COUNT_URL (from the nodes), key $PUBLIC_KEY"
}

# containerd's config and PID on each node, to compare after install and
# uninstall.
record_nodes() {
  local n
  for n in "${NODES[@]}"; do
    node_exec "$n" cat /etc/containerd/config.toml >"$WORK/$n.config.before"
    node_exec "$n" systemctl show containerd -p MainPID --value >"$WORK/$n.pid.before"
  done
}

install_storepkg() {
  step "Installing storepkg: kind load + kubectl apply -k (examples/k8s/install + this cache)"
  kind load image-archive "$REPO/bin/storepkg-installer.tar" --name "$CLUSTER"
  mkdir -p "$WORK/overlays/install"
  # kustomize takes only relative paths to other kustomizations.
  cat >"$WORK/overlays/install/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$WORK/overlays/install" "$REPO/examples/k8s/install")
configMapGenerator:
  - name: storepkg-node-config
    namespace: storepkg-system
    behavior: replace
    literals:
      - STOREPKG_SUBSTITUTERS=$CACHE_URL $SLOW_URL $COUNT_URL
      - STOREPKG_TRUSTED_PUBLIC_KEYS=$PUBLIC_KEY
EOF
  kubectl apply -k "$WORK/overlays/install"
  log "waiting for storepkg.dev/ready=true on every node"
  kubectl wait node --all --for=jsonpath='{.metadata.labels.storepkg\.dev/ready}'=true --timeout=180s ||
    fail "nodes not labelled storepkg.dev/ready=true"
  kubectl -n storepkg-system rollout status ds/storepkg-node --timeout=120s || fail "DaemonSet storepkg-node not ready"
  local n before after
  for n in "${NODES[@]}"; do
    before=$(cat "$WORK/$n.pid.before")
    after=$(node_exec "$n" systemctl show containerd -p MainPID --value)
    [[ "$after" != 0 && "$after" != "$before" ]] || fail "$n: containerd was not restarted by systemd (MainPID $before -> $after)"
    retry 10 1 serves_storepkg "$n" || fail "$n: containerd's CRI has no storepkg runtime"
    log "$n: containerd restarted through systemd (MainPID $before -> $after), runtime storepkg served"
  done
  kubectl -n storepkg-system logs ds/storepkg-node -c install | sed 's/^/  install: /' >&2
}

# agent_pod NODE: the storepkg-node pod on NODE.
agent_pod() {
  kubectl -n storepkg-system get pod -l app.kubernetes.io/name=storepkg-node \
    --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'
}

# agent_api METHOD PATH BODY [CONTENT-TYPE]: one request to the API
# server from the agent's node (AGENT_NODE) with the agent's own token,
# the one kubelet projected into its pod (AGENT_TOKEN, a file on the node),
# as the installer and the agent send them. Prints the response body and
# then its HTTP status on a line of its own.
agent_api() {
  # shellcheck disable=SC2016 # expanded by the node's shell
  node_exec "$AGENT_NODE" sh -c 'exec curl -sS --cacert /etc/kubernetes/pki/ca.crt \
      -H "Authorization: Bearer $(cat "$1")" -X "$2" -H "Content-Type: $5" --data-binary "$4" \
      -w "\n%{http_code}" "$(sed -n "s/^ *server: *//p" /etc/kubernetes/kubelet.conf)$3"' \
    sh "$AGENT_TOKEN" "$1" "$2" "$3" "${4:-application/json}"
}

# allowed METHOD PATH BODY [CONTENT-TYPE]: agent_api succeeds; its
# response in ALLOWED_BODY.
allowed() {
  local out
  out=$(agent_api "$@") || fail "agent_api $1 $2: $out"
  [[ "${out##*$'\n'}" == 2?? ]] || fail "the agent's token was refused: $1 $2 $3: $out"
  ALLOWED_BODY=$out
}

# refused_by POLICY METHOD PATH BODY [CONTENT-TYPE]: agent_api is denied
# by POLICY (not by RBAC or anything else).
refused_by() {
  local policy=$1 out
  shift
  out=$(agent_api "$@") || fail "agent_api $1 $2: $out"
  [[ "${out##*$'\n'}" == 403 ]] || fail "the agent's token was not refused: $1 $2 $3: $out"
  grep -q "ValidatingAdmissionPolicy '$policy'" <<<"$out" || fail "$1 $2 $3: not refused by $policy: $out"
  out=$(grep -o 'denied request: [^"]*' <<<"$out" | head -1)
  log "refused: $1 ${2##*/}: ${out#denied request: }"
}

# forbidden METHOD PATH BODY [CONTENT-TYPE]: agent_api is refused by RBAC.
forbidden() {
  local out
  out=$(agent_api "$@") || fail "agent_api $1 $2: $out"
  [[ "${out##*$'\n'}" == 403 ]] || fail "the agent's token was not refused: $1 $2: $out"
  ! grep -q ValidatingAdmissionPolicy <<<"$out" || fail "$1 $2: refused by a policy, not by RBAC: $out"
  log "refused by RBAC: $1 $2"
}

# agent_event KIND NAME REASON HOST: an Event as the agent posts them
# (pkg/agent/events.go) about object KIND/NAME in storepkg-system.
agent_event() {
  printf '{"apiVersion":"v1","kind":"Event","metadata":{"generateName":"e2e.","namespace":"storepkg-system"},"involvedObject":{"apiVersion":"v1","kind":"%s","namespace":"storepkg-system","name":"%s"},"reason":"%s","message":"e2e","type":"Normal","source":{"component":"storepkg-agent","host":"%s"},"reportingComponent":"storepkg.dev/agent","reportingInstance":"e2e"}' "$@"
}

check_agent_identity() {
  step "The agent's token: its own node's ready label only; the agent's capabilities"
  local node=${NODES[1]} other=${NODES[0]} pod uid out
  pod=$(agent_pod "$node")
  uid=$(kubectl -n storepkg-system get pod "$pod" -o jsonpath='{.metadata.uid}')
  AGENT_NODE=$node
  AGENT_TOKEN=$(node_exec "$node" sh -c "ls /var/lib/kubelet/pods/$uid/volumes/kubernetes.io~projected/kube-api-access-*/token")
  [[ -n "$AGENT_TOKEN" ]] || fail "$pod: no service account token on $node"
  out=$(agent_api POST /apis/authentication.k8s.io/v1/selfsubjectreviews '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' | tr -d ' \n')
  grep -q '"username":"system:serviceaccount:storepkg-system:storepkg-node"' <<<"$out" ||
    fail "$pod's token is not storepkg-node's: $out"
  grep -q "\"authentication.kubernetes.io/node-name\":\[\"$node\"\]" <<<"$out" ||
    fail "$pod's token does not name its node $node: $out"
  log "$pod's token: storepkg-node, node-name $node"

  # Its own node's label: removed and set again, as uninstall and install do.
  local p=storepkg-node-label.storepkg.dev mp=application/merge-patch+json
  allowed PATCH "/api/v1/nodes/$node" '{"metadata":{"labels":{"storepkg.dev/ready":null}}}' $mp
  [[ -z "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.storepkg\.dev/ready}')" ]] || fail "$node: label not removed"
  allowed PATCH "/api/v1/nodes/$node" '{"metadata":{"labels":{"storepkg.dev/ready":"true"}}}' $mp
  [[ "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.storepkg\.dev/ready}')" == true ]] || fail "$node: not labelled again"
  log "allowed: $node's storepkg.dev/ready removed and set again"
  refused_by $p PATCH "/api/v1/nodes/$other" '{"metadata":{"labels":{"storepkg.dev/ready":null}}}' $mp
  refused_by $p PATCH "/api/v1/nodes/$node" '{"metadata":{"labels":{"e2e.storepkg.dev/other":"x"}}}' $mp
  refused_by $p PATCH "/api/v1/nodes/$node" '{"metadata":{"labels":{"storepkg.dev/ready":"false"}}}' $mp
  refused_by $p PATCH "/api/v1/nodes/$node" '{"spec":{"taints":[{"key":"e2e.storepkg.dev/taint","effect":"NoSchedule"}]}}' $mp
  refused_by $p PATCH "/api/v1/nodes/$node" '{"metadata":{"annotations":{"e2e.storepkg.dev/a":"x"}}}' $mp

  # Events: only storepkg's, about pods, naming its own node.
  p=storepkg-node-events.storepkg.dev
  local events=/api/v1/namespaces/storepkg-system/events
  allowed POST $events "$(agent_event Pod "$pod" StorepkgFetching "$node")"
  local mine=$ALLOWED_BODY sp=application/strategic-merge-patch+json
  mine=$(tr -d ' \n' <<<"$mine" | grep -o '"name":"e2e\.[^"]*"' | head -1 | cut -d'"' -f4)
  [[ -n "$mine" ]] || fail "no name in the created event: $ALLOWED_BODY"
  allowed PATCH "$events/$mine" '{"message":"e2e, later","count":2}' $sp
  refused_by $p PATCH "$events/$mine" '{"involvedObject":{"name":"another-pod"}}' $sp
  refused_by $p POST $events "$(agent_event Pod "$pod" StorepkgFetching "$other")"
  refused_by $p POST $events "$(agent_event Pod "$pod" Killing "$node")"
  refused_by $p POST $events "$(agent_event Node "$node" StorepkgFetching "$node")"
  local name
  name=$(kubectl -n storepkg-system get events --field-selector "involvedObject.name=$pod,source=kubelet" -o jsonpath='{.items[0].metadata.name}')
  [[ -n "$name" ]] || fail "no kubelet event on $pod to try"
  refused_by $p PATCH "$events/$name" '{"message":"rewritten by the agent"}' $sp

  # Peer sharing: the token's Secret, the agents' pods, the ready nodes;
  # no other Secret, nothing of other namespaces; no Secret created but
  # that one (the API server would fill a service-account-token Secret
  # with another account's token).
  allowed GET /api/v1/namespaces/storepkg-system/secrets/storepkg-peer-token ""
  allowed GET "/api/v1/namespaces/storepkg-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dstorepkg-node" ""
  allowed GET "/api/v1/nodes?labelSelector=storepkg.dev%2Fready%3Dtrue" ""
  log "allowed: the peers' token Secret, the agents' pods, the ready nodes"
  forbidden GET /api/v1/namespaces/storepkg-system/secrets ""
  forbidden GET /api/v1/namespaces/kube-system/secrets ""
  forbidden GET /api/v1/namespaces/kube-system/pods ""
  p=storepkg-node-secret.storepkg.dev
  local secrets=/api/v1/namespaces/storepkg-system/secrets
  refused_by $p POST $secrets '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"e2e-other"},"type":"Opaque","data":{"token":"eA=="}}'
  refused_by $p POST $secrets '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"storepkg-peer-token","annotations":{"kubernetes.io/service-account.name":"storepkg-node"}},"type":"kubernetes.io/service-account-token"}'

  # The agent process: the capabilities, no new privileges, seccomp.
  local cid pid status
  cid=$(node_exec "$node" crictl ps --name '^agent$' --pod "$(node_exec "$node" crictl pods --name "$pod" -q)" -q)
  pid=$(node_exec "$node" crictl inspect -o go-template --template '{{.info.pid}}' "$cid")
  status=$(node_exec "$node" cat "/proc/$pid/status")
  grep -qx $'CapEff:\t0000000000000004' <<<"$status" || fail "agent (pid $pid): $(grep ^Cap <<<"$status")"
  grep -qx $'CapBnd:\t0000000000000004' <<<"$status" || fail "agent (pid $pid): $(grep ^Cap <<<"$status")"
  grep -qx $'NoNewPrivs:\t1' <<<"$status" || fail "agent (pid $pid) may gain privileges"
  grep -qx $'Seccomp:\t2' <<<"$status" || fail "agent (pid $pid) runs without seccomp filter"
  log "agent on $node (pid $pid): only CAP_DAC_READ_SEARCH, no new privileges, seccomp filter"
}

run_workloads() {
  step "Running examples/k8s/workloads on these closures"
  # The example's kustomization takes its paths from closures.env: give it
  # ours in a copy of the directory.
  cp -r "$REPO/examples/k8s/workloads" "$WORK/workloads"
  printf 'BUSYBOX=%s\nHELLO=%s\n' "$BUSYBOX" "$HELLO" >"$WORK/workloads/closures.env"
  kubectl apply -k "$WORK/workloads"

  kubectl -n storepkg-examples wait job/hello --for=condition=complete --timeout=180s || fail "Job hello did not complete"
  local out
  out=$(kubectl -n storepkg-examples logs job/hello)
  [[ "$out" == "Hello from a Nix store path, on hello-"* ]] || fail "Job hello printed: $out"
  log "Job hello: $out"

  kubectl -n storepkg-examples rollout status deploy/web --timeout=180s || fail "Deployment web not ready"
  kubectl -n storepkg-examples wait pod/two-containers --for=condition=Ready --timeout=120s 2>/dev/null ||
    kubectl -n storepkg-examples get pod two-containers -o wide >&2
}

check_views() {
  step "kubectl exec and logs: each container sees exactly its closure"
  local web listing
  web=$(kubectl -n storepkg-examples get pod -l app=web -o jsonpath='{.items[0].metadata.name}')
  listing=$(kubectl -n storepkg-examples exec "$web" -- ls /nix/store)
  [[ "$listing" == "$(basename "$BUSYBOX")" ]] || fail "web's /nix/store: $listing"
  kubectl -n storepkg-examples exec "$web" -- sh -c 'touch /nix/store/x' 2>/dev/null && fail "web could write /nix/store"
  log "exec: web sees /nix/store = {busybox}, read-only"
  retry 30 1 bash -c "kubectl --kubeconfig '$KUBECONFIG_FILE' -n storepkg-examples logs two-containers -c shell | grep -q '$(basename "$BUSYBOX")'" ||
    fail "two-containers/shell logs: $(kubectl -n storepkg-examples logs two-containers -c shell)"
  retry 30 1 bash -c "kubectl --kubeconfig '$KUBECONFIG_FILE' -n storepkg-examples logs two-containers -c greeter | grep -q 'Hello from a Nix store path'" ||
    fail "two-containers/greeter logs: $(kubectl -n storepkg-examples logs two-containers -c greeter)"
  log "logs: two-containers/shell and /greeter each ran from their own closure"
}

check_service() {
  step "Reaching the server through its Service from a pod on the other node"
  local ip node_web other
  ip=$(kubectl -n storepkg-examples get svc web -o jsonpath='{.spec.clusterIP}')
  node_web=$(kubectl -n storepkg-examples get pod -l app=web -o jsonpath='{.items[0].spec.nodeName}')
  other=$(printf '%s\n' "${NODES[@]}" | grep -vx "$node_web" | head -1)
  # Static busybox cannot resolve names (glibc NSS): the ClusterIP is the Service.
  kubectl -n storepkg-examples run client --restart=Never --image=registry.k8s.io/pause:3.10.1 \
    --image-pull-policy=IfNotPresent \
    --overrides="{\"metadata\":{\"annotations\":{\"storepkg.dev/paths\":\"$BUSYBOX\"}},\"spec\":{\"runtimeClassName\":\"storepkg\",\"nodeName\":\"$other\"}}" \
    --command -- sh -c "for i in \$(seq 30); do wget -q -O- http://$ip/ && exit 0; sleep 1; done; exit 1"
  kubectl -n storepkg-examples wait pod/client --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s ||
    fail "client on $other could not reach Service web ($ip): $(kubectl -n storepkg-examples logs client)"
  log "client on $other: $(kubectl -n storepkg-examples logs client)"
}

check_bad_annotation() {
  step "A pod whose path no cache has shows the path and the cause"
  local missing="/nix/store/0000000000000000000000000000000a-not-in-any-cache"
  kubectl -n storepkg-examples run missing --restart=Never --image=registry.k8s.io/pause:3.10.1 \
    --image-pull-policy=IfNotPresent \
    --overrides="{\"metadata\":{\"annotations\":{\"storepkg.dev/paths\":\"$missing\"}},\"spec\":{\"runtimeClassName\":\"storepkg\"}}" \
    --command -- true
  local seen=""
  for _ in $(seq 60); do
    seen=$(kubectl -n storepkg-examples get events --field-selector involvedObject.name=missing -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>/dev/null)
    seen+=$'\n'$(kubectl -n storepkg-examples get pod missing -o jsonpath='{range .status.containerStatuses[*]}{.state.waiting.reason}: {.state.waiting.message}{"\n"}{end}' 2>/dev/null)
    grep -q "$(basename "$missing").*not found in any cache" <<<"$seen" && break
    sleep 2
  done
  grep -q "$(basename "$missing").*not found in any cache" <<<"$seen" || fail "no event or status names the missing path and the cause; saw: $seen"
  grep '' <<<"$seen" | grep -m3 'not found' | sed 's/^/  /' >&2
  grep -q '^StorepkgFetchFailed' <<<"$seen" || fail "the agent posted no StorepkgFetchFailed event; saw: $seen"
}

check_slow_fetch() {
  step "A pod whose closure comes slowly: the agent says so in its events"
  kubectl -n storepkg-examples run sleepy --restart=Never --image=registry.k8s.io/pause:3.10.1 \
    --image-pull-policy=IfNotPresent \
    --overrides="{\"metadata\":{\"annotations\":{\"storepkg.dev/paths\":\"$SLEEPY\"}},\"spec\":{\"runtimeClassName\":\"storepkg\"}}" \
    --command -- sleepy
  kubectl -n storepkg-examples wait pod/sleepy --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s ||
    fail "pod sleepy did not run"
  [[ "$(kubectl -n storepkg-examples logs sleepy)" == "awake after a slow fetch" ]] ||
    fail "pod sleepy printed: $(kubectl -n storepkg-examples logs sleepy)"
  local events
  events=$(kubectl -n storepkg-examples get events --field-selector involvedObject.name=sleepy \
    -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}')
  grep -q "^StorepkgFetching: .*$(basename "$SLEEPY")" <<<"$events" ||
    fail "no StorepkgFetching event naming the path on pod sleepy; events: $events"
  grep -E '^StorepkgFetch' <<<"$events" | sed 's/^/  /' >&2
}

# peers_file NODE: NODE's peers file, its token replaced by its length.
peers_file() {
  node_exec "$1" cat /run/storepkg/peers/peers.json | jq -c '.token |= length'
}

check_peers_files() {
  step "Every node's peers file: the three nodes' agents, the Secret's token, 0600"
  local token n f want urls=()
  token=$(kubectl -n storepkg-system get secret storepkg-peer-token -o jsonpath='{.data.token}' | base64 -d)
  ((${#token} >= 40)) || fail "Secret storepkg-peer-token holds no token (${#token} characters)"
  for n in "${NODES[@]}"; do
    urls+=("{\"name\":\"$n\",\"url\":\"http://$(kubectl -n storepkg-system get pod "$(agent_pod "$n")" -o jsonpath='{.status.podIP}'):7420\"}")
  done
  want=$(printf '%s\n' "${urls[@]}" | jq -sc 'sort_by(.name)')
  for n in "${NODES[@]}"; do
    # The agents become ready one after the other: wait for the last.
    retry 60 1 bash -c "[[ \$(docker exec $n cat /run/storepkg/peers/peers.json 2>/dev/null | jq -c .peers) == '$want' ]]" ||
      fail "$n: peers file $(peers_file "$n" 2>&1), want peers $want"
    f=$(node_exec "$n" cat /run/storepkg/peers/peers.json)
    [[ $(jq -r .version <<<"$f") == 1 && $(jq -r .self <<<"$f") == "$n" ]] || fail "$n: peers file $(peers_file "$n")"
    [[ $(jq -r .token <<<"$f") == "$token" ]] || fail "$n: the peers file's token is not the Secret's"
    [[ $(node_exec "$n" stat -c '%a %u' /run/storepkg/peers/peers.json) == "600 0" ]] ||
      fail "$n: peers file mode: $(node_exec "$n" stat -c '%a %U' /run/storepkg/peers/peers.json)"
    log "$n: $(peers_file "$n")"
  done
}

# nar_counts CLOSURE: for each path of CLOSURE but busybox, how many times
# the counting cache served its NAR: "<path> <requests> <bytes served>
# <NAR file size>" lines.
nar_counts() {
  local stats p hash url
  stats=$(curl -sS "$COUNT_URL/.slowcache/stats") || fail "counting cache: no stats"
  for p in $(nix_run nix-store --store "local?root=$WORK/build" -qR "$1" | grep -v -- '-busybox$'); do
    hash=$(basename "$p" | cut -c1-32)
    url=$(sed -n 's/^URL: //p' "$WORK/countcache/$hash.narinfo")
    jq -r --arg u "/$url" --arg p "$p" --arg size "$(stat -c %s "$WORK/countcache/$url")" \
      '"\($p) \(.[$u].requests // 0) \(.[$u].bytes // 0) \($size)"' <<<"$stats"
  done
}

# fresh_deployment CLOSURE: the Deployment "fresh", a pod on every node
# (the control plane's taint tolerated) running CLOSURE; Recreate, so a
# new closure starts on every node at once.
fresh_deployment() {
  kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: fresh
  namespace: storepkg-examples
spec:
  replicas: ${#NODES[@]}
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app: fresh
  template:
    metadata:
      labels:
        app: fresh
      annotations:
        storepkg.dev/paths: "$1"
    spec:
      runtimeClassName: storepkg
      terminationGracePeriodSeconds: 1
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          operator: Exists
          effect: NoSchedule
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector:
                matchLabels:
                  app: fresh
              topologyKey: kubernetes.io/hostname
      containers:
        - name: fresh
          image: registry.k8s.io/pause:3.10.1
          imagePullPolicy: IfNotPresent
          command: ["fresh"]
EOF
}

# wait_fresh CLOSURE: the rollout of CLOSURE done, one pod on each node,
# each saying so.
wait_fresh() {
  local tag nodes pod
  tag=$(basename "$1")
  tag=${tag#*-}
  tag=${tag%-storepkg}
  kubectl -n storepkg-examples rollout status deploy/fresh --timeout=300s || fail "Deployment fresh ($1) did not roll out"
  nodes=$(kubectl -n storepkg-examples get pod -l app=fresh --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | wc -l)
  ((nodes == ${#NODES[@]})) || fail "fresh pods run on $nodes nodes, want ${#NODES[@]}"
  for pod in $(kubectl -n storepkg-examples get pod -l app=fresh --field-selector=status.phase=Running -o name); do
    retry 30 1 bash -c "kubectl --kubeconfig '$KUBECONFIG_FILE' -n storepkg-examples logs $pod | grep -q '^$tag closure on'" ||
      fail "$pod: $(kubectl -n storepkg-examples logs "$pod")"
  done
}

# check_counts CLOSURE MAX: the counting cache served each NAR of CLOSURE
# (busybox aside, which the nodes have) at least once and at most MAX
# times; with MAX 1, at most 1.1 times the closure's bytes in all.
check_counts() {
  local p n bytes size sum_bytes=0 sum_size=0 max=$2
  while read -r p n bytes size; do
    log "  upstream served $(basename "$p") $n times ($bytes bytes, NAR file $size)"
    ((n >= 1 && n <= max)) || fail "the counting cache served $p's NAR $n times, want 1 to $max"
    sum_bytes=$((sum_bytes + bytes)) sum_size=$((sum_size + size))
  done < <(nar_counts "$1")
  log "upstream served $sum_bytes bytes for $sum_size bytes of NARs: $(awk -v a="$sum_bytes" -v b="$sum_size" 'BEGIN{printf "%.2f", a/b}')x on ${#NODES[@]} nodes"
  if ((max == 1)); then
    ((sum_bytes * 10 <= sum_size * 11)) || fail "upstream served more than 1.1x the closure"
  fi
}

check_peer_rollout() {
  step "A Deployment with a pod on every node on a fresh closure: what crosses the uplink"
  local start=$SECONDS
  fresh_deployment "$FRESH1"
  wait_fresh "$FRESH1"
  log "rollout of fresh1 on ${#NODES[@]} nodes: $((SECONDS - start))s"
  check_counts "$FRESH1" 1
  check_peer_sources

  step "Rolling out another fresh closure; one node's agent is killed meanwhile"
  local victim=${NODES[2]} pod cid pid restarts
  pod=$(agent_pod "$victim")
  restarts=$(kubectl -n storepkg-system get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="agent")].restartCount}')
  start=$SECONDS
  fresh_deployment "$FRESH2"
  # As soon as a fetch runs on the victim (its shim's record is there).
  retry 120 0.5 bash -c "docker exec $victim sh -c 'ls /run/storepkg/fetches/*.json' >/dev/null 2>&1" ||
    fail "no fetch started on $victim"
  cid=$(node_exec "$victim" crictl ps --name '^agent$' --pod "$(node_exec "$victim" crictl pods --name "$pod" -q)" -q)
  pid=$(node_exec "$victim" crictl inspect -o go-template --template '{{.info.pid}}' "$cid")
  node_exec "$victim" kill -KILL "$pid"
  log "killed the agent on $victim (pid $pid) $((SECONDS - start))s into the rollout"
  wait_fresh "$FRESH2"
  log "rollout of fresh2 on ${#NODES[@]} nodes, an agent killed: $((SECONDS - start))s"
  retry 60 1 bash -c "[[ \$(kubectl --kubeconfig '$KUBECONFIG_FILE' -n storepkg-system get pod $pod -o jsonpath='{.status.containerStatuses[?(@.name==\"agent\")].restartCount}') -gt $restarts ]]" ||
    fail "the agent on $victim was not restarted"
  # The killed agent's coordination is lost: bounded by a fetch per node.
  check_counts "$FRESH2" "${#NODES[@]}"
  # Its peers file lists every node again once it is ready.
  check_peers_files
}

# check_peer_sources: bytes came from peers, and the pods' events say so;
# the peer listener refuses a pod on another node.
check_peer_sources() {
  step "Peers: bytes from peers in the metrics and events; the listener refuses pods"
  local pod all="" events peer
  for pod in $(kubectl -n storepkg-system get pod -l app.kubernetes.io/name=storepkg-node -o name); do
    all+=$(kubectl get --raw "/api/v1/namespaces/storepkg-system/pods/${pod#pod/}:9477/proxy/metrics")$'\n'
  done
  peer=$(awk '/^storepkg_fetched_bytes_total[{].*source="peer"/ { s += $NF } END { printf "%d\n", s }' <<<"$all")
  ((peer > 0)) || fail "no bytes counted from peers: $(grep '^storepkg_fetched_bytes_total' <<<"$all")"
  log "the agents counted $peer bytes from peers"
  events=$(kubectl -n storepkg-examples get events --field-selector reason=StorepkgFetched \
    -o jsonpath='{range .items[*]}{.involvedObject.name}: {.message}{"\n"}{end}')
  grep -q '^fresh-.* MB from peers, .* MB from upstream$' <<<"$events" ||
    fail "no StorepkgFetched event says where the bytes came from: $events"
  grep '^fresh-' <<<"$events" | sed 's/^/  /' >&2

  # A pod on another node than the agent, without the token and with a
  # forged one: 401 both times.
  local target=${NODES[1]} other=${NODES[0]} ip out
  ip=$(kubectl -n storepkg-system get pod "$(agent_pod "$target")" -o jsonpath='{.status.podIP}')
  kubectl -n storepkg-examples run peer-probe --restart=Never --image=registry.k8s.io/pause:3.10.1 \
    --image-pull-policy=IfNotPresent \
    --overrides="{\"metadata\":{\"annotations\":{\"storepkg.dev/paths\":\"$BUSYBOX\"}},\"spec\":{\"runtimeClassName\":\"storepkg\",\"nodeName\":\"$other\"}}" \
    --command -- sh -c "wget -q -O- http://$ip:7420/nix-cache-info; wget -q -O- --header 'Authorization: Bearer forged-token-forged-token' http://$ip:7420/nix-cache-info; exit 0"
  kubectl -n storepkg-examples wait pod/peer-probe --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s ||
    fail "pod peer-probe did not run"
  out=$(kubectl -n storepkg-examples logs peer-probe 2>&1)
  [[ $(grep -c 401 <<<"$out") == 2 && $out != *StoreDir* ]] || fail "a pod on $other reached the peer listener of $target: $out"
  log "a pod on $other: the peer listener of $target answered 401 without the token and with a forged one"
}

check_metrics() {
  step "The agent's metrics"
  local pod metrics m all=""
  for pod in $(kubectl -n storepkg-system get pod -l app.kubernetes.io/name=storepkg-node -o name); do
    metrics=$(kubectl get --raw "/api/v1/namespaces/storepkg-system/pods/${pod#pod/}:9477/proxy/metrics") ||
      fail "$pod: metrics endpoint did not answer"
    for m in storepkg_store_paths storepkg_store_bytes storepkg_substitutions_total storepkg_gc_runs_total; do
      grep -q "^$m" <<<"$metrics" || fail "$pod: no $m in /metrics"
    done
    log "$pod: $(grep -E '^storepkg_(store_paths|substitutions_total|fetched_bytes_total|fetch_failures_total)' <<<"$metrics" | tr '\n' ' ')"
    all+=$metrics$'\n'
  done
  # Over both nodes: the examples' closures were substituted, bytes came
  # from our cache, and the missing path counts as a not_found failure.
  sum() { awk -v re="$1" '$0 ~ re { s += $NF } END { printf "%d\n", s }' <<<"$all"; }
  (($(sum '^storepkg_substitutions_total ') >= 2)) || fail "storepkg_substitutions_total < 2 over the nodes"
  (($(sum "^storepkg_fetched_bytes_total[{]cache=\"$CACHE_URL\",source=\"upstream\"[}] ") > 0)) || fail "no bytes counted for cache $CACHE_URL"
  (($(sum '^storepkg_fetch_failures_total[{]reason="not_found"[}] ') >= 1)) || fail "the missing path is not counted in storepkg_fetch_failures_total{reason=not_found}"
  # The agent's own events and their updates pass its policy.
  (($(sum '^storepkg_pod_events_total[{].*result="success"') >= 3)) || fail "fewer than 3 pod events posted"
  (($(sum '^storepkg_pod_events_total[{].*result="failure"') == 0)) || fail "pod events failed: $(grep '^storepkg_pod_events_total' <<<"$all")"
}

check_clean_nodes() {
  step "Deleting the workloads; every node clean, store still valid"
  kubectl delete -k "$WORK/workloads" --wait=true --timeout=120s
  local n roots
  for n in "${NODES[@]}"; do
    retry 30 1 bash -c "! docker exec $n grep -q ' /nix/store/' /proc/1/mountinfo" ||
      fail "$n: store mounts left: $(node_exec "$n" grep ' /nix/store/' /proc/1/mountinfo | head -3)"
    retry 30 1 bash -c "[ -z \"\$(docker exec $n ls -A /nix/var/nix/gcroots/storepkg 2>/dev/null)\" ]" ||
      fail "$n: GC roots left: $(node_exec "$n" ls /nix/var/nix/gcroots/storepkg)"
    retry 10 1 bash -c "[ -z \"\$(docker exec $n ls -A /nix/var/storepkg/owners 2>/dev/null)\" ]" ||
      fail "$n: GC root owner records left: $(node_exec "$n" ls /nix/var/storepkg/owners)"
    # Real Nix checks the node's store: every path valid and intact.
    rm -rf "$WORK/nodestore"
    mkdir -p "$WORK/nodestore"
    docker cp "$n:/nix" "$WORK/nodestore/" >/dev/null
    nix_run nix-store --store "local?root=$WORK/nodestore" --verify --check-contents 2>&1 | grep -v '^reading\|^checking' >&2 || true
    nix_run nix-store --store "local?root=$WORK/nodestore" --verify --check-contents >/dev/null 2>&1 || fail "$n: nix-store --verify failed on the node store"
    roots=$(nix_run nix-store --store "local?root=$WORK/nodestore" --check-validity "$BUSYBOX" 2>&1) || fail "$n: $BUSYBOX no longer valid: $roots"
    # The fresh closures, whoever served them, are whole on every node.
    # shellcheck disable=SC2046 # one argument per path
    roots=$(nix_run nix-store --store "local?root=$WORK/nodestore" --check-validity \
      $(nix_run nix-store --store "local?root=$WORK/build" -qR "$FRESH1" "$FRESH2") 2>&1) || fail "$n: a fresh closure is not valid: $roots"
    log "$n: no mounts, no GC roots, store valid ($(ls "$WORK/nodestore/nix/store" | grep -vc '\.lock$') paths)"
  done
}

check_agent_gc() {
  step "A collection with the agent's privileges frees the workloads' closures"
  local n pod out
  for n in "${NODES[@]}"; do
    pod=$(agent_pod "$n")
    # In the agent's container: its capabilities, mounts and PID namespace.
    out=$(kubectl -n storepkg-system exec "$pod" -c agent -- storepkg gc --root=/host 2>&1) || fail "$n: storepkg gc in the agent: $out"
    [[ "$out" =~ deleted\ ([0-9]+)\ paths && ${BASH_REMATCH[1]} -gt 0 ]] || fail "$n: storepkg gc in the agent deleted nothing: $out"
    log "$n: $out"
    out=$(kubectl -n storepkg-system logs "$pod" -c agent)
    ! grep -Ei 'permission denied|operation not permitted' <<<"$out" || fail "$n: the agent lacked a permission"
  done
}

uninstall_storepkg() {
  step "Uninstalling storepkg (examples/k8s/uninstall)"
  kubectl delete -k "$WORK/overlays/install" --wait=true --timeout=120s
  mkdir -p "$WORK/overlays/uninstall"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\n' "$(realpath --relative-to="$WORK/overlays/uninstall" "$REPO/examples/k8s/uninstall")" \
    >"$WORK/overlays/uninstall/kustomization.yaml"
  kubectl apply -k "$WORK/overlays/uninstall"
  kubectl -n storepkg-system rollout status ds/storepkg-uninstall --timeout=180s || fail "uninstall DaemonSet not ready"
  local n rc
  for n in "${NODES[@]}"; do
    retry 30 1 bash -c "docker exec $n crictl info >/dev/null 2>&1" || fail "$n: containerd does not answer after uninstall"
    rc=0
    serves_storepkg "$n" || rc=$?
    [[ $rc == 1 ]] || fail "$n: containerd still serves the storepkg runtime (or crictl info failed: status $rc)"
    node_exec "$n" cat /etc/containerd/config.toml | cmp -s - "$WORK/$n.config.before" ||
      fail "$n: /etc/containerd/config.toml differs from before install"
    node_exec "$n" test -e /opt/storepkg && fail "$n: /opt/storepkg left"
    [[ -z "$(kubectl get node "$n" -o jsonpath='{.metadata.labels.storepkg\.dev/ready}')" ]] || fail "$n: still labelled ready"
    log "$n: containerd config restored byte for byte, runtime gone, label removed"
  done
  kubectl delete -k "$WORK/overlays/uninstall" --wait=true --timeout=120s
}

main() {
  if [[ "${1:-}" == down ]]; then
    "$REPO/hack/kind/cluster.sh" delete "$CLUSTER"
    "$REPO/hack/kind/docker.sh" stop
    return
  fi
  trap cleanup EXIT
  prepare
  build_cache
  start_cluster
  serve_cache
  record_nodes
  install_storepkg
  check_agent_identity
  check_peers_files
  run_workloads
  check_views
  check_service
  check_bad_annotation
  check_slow_fetch
  # Before the rollouts: they kill an agent, whose counters start again.
  check_metrics
  check_peer_rollout
  check_clean_nodes
  check_agent_gc
  uninstall_storepkg
}

main "$@"
