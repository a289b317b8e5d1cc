#!/usr/bin/env bash
# Checks that a cluster made by cluster.sh works the way tests will use it:
#
#   hack/kind/smoke.sh NAME
#
#   - a locally built image (busybox, integration/testimages) loaded with
#     `kind load image-archive` runs on each node, no pull;
#   - `kubectl exec` and `kubectl logs` work;
#   - a pod reaches a pod on the other node by pod IP, through a Service
#     (ClusterIP, kube-proxy) and by DNS name (CoreDNS);
#   - nodes and pods reach the host at the kind network's gateway, where
#     tests serve things (e.g. a binary cache).
#
# Everything runs in the namespace storepkg-smoke, removed at the end.
set -o errexit -o nounset -o pipefail

LOG_PREFIX="kind-smoke"
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=storepkg-smoke
HOST_PORT=${STOREPKG_SMOKE_HOST_PORT:-38080}

WORK=
HTTPD_PID=

cleanup() {
  local rc=$?
  if [[ -n $HTTPD_PID ]]; then kill "$HTTPD_PID" 2>/dev/null || true; fi
  [[ -n $WORK ]] && rm -rf "$WORK"
  if [[ -n ${KUBECONFIG:-} ]]; then
    "$K8S_BIN/kubectl" delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  ((rc == 0)) || log "FAILED"
}

# pod NAME NODE CMD: a busybox pod pinned to NODE (tolerating the control
# plane's taint) running `sh -c CMD`.
pod() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  labels: {app: $1}
spec:
  nodeSelector: {kubernetes.io/hostname: $2}
  tolerations: [{operator: Exists}]
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $BUSYBOX
      imagePullPolicy: Never
      command: [sh, -c, '$3']
---
EOF
}

# http POD URL-HOST PORT: GET / from inside POD with nc (Debian's static
# busybox cannot resolve names itself, and its wget needs NSS).
http() {
  "$K8S_BIN/kubectl" -n "$NS" exec "$1" -- sh -c \
    "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $2 $3" 2>/dev/null | tail -n 1
}

# expect WHAT WANT CMD...: CMD's output must be WANT (retried: right after
# a node turns Ready, kube-proxy and CoreDNS may still be catching up).
expect() {
  local what=$1 want=$2 got=
  shift 2
  local i
  for ((i = 0; i < 30; i++)); do
    got=$("$@" || true)
    if [[ $got == "$want" ]]; then
      log "ok: $what"
      return 0
    fi
    sleep 1
  done
  die "$what: got '$got', want '$want'"
}

main() {
  local name=${1:?usage: $0 NAME}
  local start=$SECONDS
  trap cleanup EXIT
  eval "$("$KIND_DIR/cluster.sh" env "$name")"
  "$KIND_DIR/cluster.sh" kubeconfig "$name" >/dev/null
  local cp=$name-control-plane worker=$name-worker
  local kubectl=("$K8S_BIN/kubectl")
  "${kubectl[@]}" get node "$cp" "$worker" >/dev/null ||
    die "the smoke test needs a control plane and a worker"

  # A locally built image, loaded the way tests load theirs.
  WORK=$(mktemp -d)
  local line
  line=$(cd "$REPO_ROOT/integration" && GOFLAGS=-buildvcs=false go run ./cmd/mkimage -out "$WORK" docker.io/library/busybox:storepkg-test)
  BUSYBOX=${line#* }
  kind load image-archive "${line%% *}" --name "$name" >/dev/null
  log "ok: kind load image-archive $BUSYBOX"

  "${kubectl[@]}" delete namespace "$NS" --ignore-not-found >/dev/null
  "${kubectl[@]}" create namespace "$NS" >/dev/null
  # The default service account appears a moment after the namespace.
  retry 30 1 "${kubectl[@]}" -n "$NS" get serviceaccount default >/dev/null 2>&1
  # shellcheck disable=SC2016 # expanded in the pod
  {
    pod web "$worker" 'echo web starting; echo "hello from $(cat /etc/hostname)" >/tmp/index.html; exec httpd -f -p 8080 -h /tmp'
    pod client "$cp" 'echo client starting; exec sleep 3600'
  } | "${kubectl[@]}" apply -f - >/dev/null
  "${kubectl[@]}" -n "$NS" expose pod web --port 80 --target-port 8080 >/dev/null
  "${kubectl[@]}" -n "$NS" wait --for=condition=Ready pod/web pod/client --timeout=120s >/dev/null
  log "ok: pods from the local image run on $worker and $cp"

  expect "kubectl exec" "exec works" "${kubectl[@]}" -n "$NS" exec client -- echo exec works
  expect "kubectl logs" "web starting" "${kubectl[@]}" -n "$NS" logs web

  local web_ip svc_ip
  web_ip=$("${kubectl[@]}" -n "$NS" get pod web -o jsonpath='{.status.podIP}')
  svc_ip=$("${kubectl[@]}" -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')
  expect "pod IP across nodes ($web_ip)" "hello from web" http client "$web_ip" 8080
  expect "Service ClusterIP ($svc_ip)" "hello from web" http client "$svc_ip" 80
  expect "DNS name web.$NS.svc.cluster.local" "$svc_ip" \
    sh -c "'$K8S_BIN/kubectl' -n $NS exec client -- busybox nslookup web.$NS.svc.cluster.local 2>/dev/null |
      awk '/^Name:/ {n=1} n && /^Address/ {print \$NF; exit}'"

  # The host, from a node and from a pod (masqueraded by kindnet-lite).
  local gw
  gw=$("$KIND_DIR/cluster.sh" host-ip)
  mkdir -p "$WORK/www"
  echo "hello from the host" >"$WORK/www/index.html"
  busybox httpd -f -p "$gw:$HOST_PORT" -h "$WORK/www" &
  HTTPD_PID=$!
  expect "host $gw from node $worker" "hello from the host" \
    docker exec "$worker" curl -fsS "http://$gw:$HOST_PORT/"
  expect "host $gw from a pod" "hello from the host" http client "$gw" "$HOST_PORT"

  log "all checks passed in $((SECONDS - start))s"
}

main "$@"
