#!/usr/bin/env bash
# Copyright 2026 The storepkg Authors.
#
# bench-peers.sh: the peer sharing scale simulation (issue 16). N nodes on
# this machine, each a store root of its own on a tmpfs and a real
# `storepkg agent` serving it on 127.0.0.1:<port> (--peers-static: a peers
# file listing all N, one token); one upstream cache on 127.0.0.1 behind
# one shared bandwidth limit that counts what it serves
# (integration/cmd/ratecache). A rollout starts one `storepkg fetch
# --peers` per node, all at once, and ends when the last one exits; the
# same N then fetch from upstream alone (no agents, no --peers), in the
# same run. For each N and mode: the NAR bytes upstream served (and how
# many copies of the closure that is), the time until every node has the
# closure, the bytes the nodes took from each other. At the end of the
# largest N's peer rollout every node's store is checked with real Nix
# (nix-store --verify --check-contents, and the closure valid).
#
# The closure is a part of the mixed benchmark closure
# (hack/mkbench-closure.sh): CLOSURE_NAME's closure in its zstd cache,
# signed; the upstream serves that cache (the fetches ask for one root and
# take its closure only).
#
# Usage: hack/bench-peers.sh   (or: make bench-peers; make bench runs it)
#
# Environment:
#   NODES         node counts, default "10 30 100"; a count the memory
#                 cannot hold is skipped, with the reason in the results
#   RATE          the upstream's bandwidth, all connections together
#                 (ratecache -rate), default 50MB (bytes per second)
#   CLOSURE_NAME  the root's name in the closure, default python-wrapper
#                 (30 paths, 47 MB of NARs, 15 MB of zstd)
#   VERIFY        largest (default: the largest N's peer rollout) or all
#                 (every peer rollout)
#   BENCH_DIR     the mixed closure and its caches, default
#                 /var/tmp/storepkg-bench
#   STOREPKG      the binary, default ./bin/storepkg
#   RESULTS_JSON  a file to write the results to as JSON (hack/bench.sh)
#
# Target: with peers, the upstream serves at most 1.1 copies of the
# closure's compressed NARs (what one node fetching alone downloads),
# whatever N. Judged on compressed bytes, not NAR bytes, because the
# cache serves compressed NARs: against the NAR size (3x larger for this
# closure) three full copies would pass.

set -o errexit -o nounset -o pipefail -o errtrace

LOG_PREFIX=bench-peers
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NODES="${NODES:-10 30 100}"
RATE="${RATE:-50MB}"
CLOSURE_NAME="${CLOSURE_NAME:-python-wrapper}"
VERIFY="${VERIFY:-largest}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/storepkg-bench}"
STOREPKG="${STOREPKG:-${REPO_ROOT}/bin/storepkg}"
RESULTS_JSON="${RESULTS_JSON:-}"
TARGET_COPIES=1.1
# Processes per node, at most: an agent (~30 MB RSS) and a fetch (peak
# RSS ~55 MB on this closure).
PROC_MB_PER_NODE=90
# Memory kept for everything else on the machine (MB).
MEM_RESERVE_MB=2048

WORK=""
UPSTREAM_PID=""
AGENT_PIDS=()
FETCH_PIDS=()

trap 'echo "ERROR: ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2' ERR

stop_pids() {
  local p
  for p in "$@"; do kill "${p}" 2>/dev/null || true; done
  for p in "$@"; do wait "${p}" 2>/dev/null || true; done
}

stop_agents() {
  ((${#AGENT_PIDS[@]} == 0)) || stop_pids "${AGENT_PIDS[@]}"
  AGENT_PIDS=()
}

cleanup() {
  ((${#FETCH_PIDS[@]} == 0)) || stop_pids "${FETCH_PIDS[@]}"
  FETCH_PIDS=()
  stop_agents
  [[ -z "${UPSTREAM_PID}" ]] || stop_pids "${UPSTREAM_PID}"
  UPSTREAM_PID=""
  if [[ -n "${WORK}" && -d "${WORK}" ]]; then
    while mountpoint -q "${WORK}/roots"; do
      umount "${WORK}/roots" 2>/dev/null || { sleep 1; umount -l "${WORK}/roots"; }
    done
    chmod -R u+w "${WORK}" 2>/dev/null || true
    rm -rf "${WORK}"
  fi
}

# remove_tree DIR: store paths are read-only dirs.
remove_tree() {
  chmod -R u+w "$1" 2>/dev/null || true
  rm -rf "$1"
}

# ---------------------------------------------------------------------------
# The closure

# narinfo_field FILE FIELD
narinfo_field() { sed -n "s/^$2: //p" "$1"; }

# find_closure: sets CLOSURE_ROOT, CLOSURE_PATHS, CLOSURE_NAR_BYTES and
# CLOSURE_FILE_BYTES from the zstd cache's narinfos.
find_closure() {
  local f
  f=$(grep -l -E "^StorePath: /nix/store/[a-z0-9]{32}-${CLOSURE_NAME}\$" "${CACHE}"/*.narinfo | head -1) ||
    die "no path named ${CLOSURE_NAME} in ${CACHE}"
  [[ -n "${f}" ]] || die "no path named ${CLOSURE_NAME} in ${CACHE}"
  CLOSURE_ROOT=$(narinfo_field "${f}" StorePath)
  local -A seen=()
  local queue=("$(basename "${CLOSURE_ROOT}")") p r ni
  CLOSURE_NAR_BYTES=0
  CLOSURE_FILE_BYTES=0
  while ((${#queue[@]} > 0)); do
    p="${queue[0]}"
    queue=("${queue[@]:1}")
    [[ -z "${seen[${p}]:-}" ]] || continue
    seen[${p}]=1
    ni="${CACHE}/${p%%-*}.narinfo"
    [[ -f "${ni}" ]] || die "${CACHE}: no narinfo for ${p} (a reference in ${CLOSURE_NAME}'s closure)"
    CLOSURE_NAR_BYTES=$((CLOSURE_NAR_BYTES + $(narinfo_field "${ni}" NarSize)))
    CLOSURE_FILE_BYTES=$((CLOSURE_FILE_BYTES + $(narinfo_field "${ni}" FileSize)))
    for r in $(narinfo_field "${ni}" References); do
      queue+=("${r}")
    done
  done
  CLOSURE_PATHS=${#seen[@]}
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

# ---------------------------------------------------------------------------
# The upstream and the nodes

start_upstream() {
  log "building integration/cmd/ratecache"
  (cd "${REPO_ROOT}/integration" && go build -o "${WORK}/ratecache" ./cmd/ratecache)
  "${WORK}/ratecache" -dir "${CACHE}" -addr 127.0.0.1:0 -addr-file "${WORK}/upstream-addr" -rate "${RATE}" \
    2>"${WORK}/ratecache.log" &
  UPSTREAM_PID=$!
  retry 50 0.1 test -s "${WORK}/upstream-addr" || die "ratecache did not start: $(cat "${WORK}/ratecache.log")"
  UPSTREAM="http://$(cat "${WORK}/upstream-addr")"
  log "upstream ${UPSTREAM} at ${RATE}/s (${CACHE})"
}

upstream_reset() { curl -fsS -X POST "${UPSTREAM}/.ratecache/reset" >/dev/null; }
upstream_stats() { curl -fsS "${UPSTREAM}/.ratecache/stats"; }

# free_port_base N: prints a port P such that P..P+N-1 are all free on
# 127.0.0.1 (other work on the machine listens too).
free_port_base() {
  local n="$1" base used i ok
  used=$(ss -Htan | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u)
  for _ in $(seq 50); do
    base=$((20000 + RANDOM % 30000))
    ok=1
    for ((i = 0; i < n; i++)); do
      if grep -qx "$((base + i))" <<<"${used}"; then ok=0; break; fi
    done
    ((ok)) && { echo "${base}"; return; }
  done
  die "no ${n} free consecutive ports found"
}

# make_nodes DIR N: N empty roots DIR/node-I, each with a peers file
# listing all N at ports PORT_BASE+I.
make_nodes() {
  local dir="$1" n="$2" i peers=""
  for ((i = 1; i <= n; i++)); do
    peers+="${peers:+,}{\"name\":\"node-${i}\",\"url\":\"http://127.0.0.1:$((PORT_BASE + i - 1))\"}"
  done
  for ((i = 1; i <= n; i++)); do
    mkdir -p "${dir}/node-${i}/status"
    echo "{\"version\":1,\"self\":\"node-${i}\",\"token\":\"${TOKEN}\",\"peers\":[${peers}]}" >"${dir}/node-${i}/peers.json"
    chmod 0600 "${dir}/node-${i}/peers.json"
  done
}

# start_agents DIR N: one agent per node, serving its root to the others
# with the coordinator; waits until each answers with the token.
start_agents() {
  local dir="$1" n="$2" i
  for ((i = 1; i <= n; i++)); do
    "${STOREPKG}" agent --root "${dir}/node-${i}" --status-dir "${dir}/node-${i}/status" \
      --listen-address "" --peer-listen "127.0.0.1:$((PORT_BASE + i - 1))" \
      --peers-static "${dir}/node-${i}/peers.json" --kube-events false \
      --interval 1h --gc-high-percent 100 --gc-low-percent 99 --log-level warn \
      2>"${dir}/node-${i}/agent.log" &
    AGENT_PIDS+=($!)
  done
  for ((i = 1; i <= n; i++)); do
    retry 100 0.2 curl -fs -o /dev/null -H "Authorization: Bearer ${TOKEN}" \
      "http://127.0.0.1:$((PORT_BASE + i - 1))/nix-cache-info" ||
      die "agent node-${i} not serving on 127.0.0.1:$((PORT_BASE + i - 1)): $(tail -5 "${dir}/node-${i}/agent.log")"
  done
}

# rollout DIR N MODE: one fetch per node, all at once; waits for all.
# Each node's DIR/node-I/{fetch.json,fetch.log,rc,end}.
rollout() {
  local dir="$1" n="$2" mode="$3" i extra=()
  local start
  start=$(date +%s.%N)
  echo "${start}" >"${dir}/start"
  for ((i = 1; i <= n; i++)); do
    extra=()
    [[ "${mode}" == peers ]] && extra=(--peers "${dir}/node-${i}/peers.json")
    # The subshell notes when its fetch ends; stopped (cleanup), it stops
    # the fetch first.
    (
      rc=0
      "${STOREPKG}" fetch --json --timeout 15m --root "${dir}/node-${i}" \
        --substituter "${UPSTREAM}" --trusted-public-key "${PUBLIC_KEY}" \
        "${extra[@]}" "${CLOSURE_ROOT}" >"${dir}/node-${i}/fetch.json" 2>"${dir}/node-${i}/fetch.log" &
      fetch_pid=$!
      trap 'kill "${fetch_pid}" 2>/dev/null; wait "${fetch_pid}"; exit 143' TERM
      wait "${fetch_pid}" || rc=$?
      date +%s.%N >"${dir}/node-${i}/end"
      echo "${rc}" >"${dir}/node-${i}/rc"
    ) &
    FETCH_PIDS+=($!)
  done
  local p
  for p in "${FETCH_PIDS[@]}"; do wait "${p}" || true; done
  FETCH_PIDS=()
}

# verify_nodes DIR N: every node's store checked by Nix; prints how many
# passed.
verify_nodes() {
  local dir="$1" n="$2"
  local ok=0 i root
  for ((i = 1; i <= n; i++)); do
    root="${dir}/node-${i}"
    if nix_run nix-store --store "local?root=${root}" --verify --check-contents >"${root}/verify.log" 2>&1 &&
      [[ $(nix_run nix-store --store "local?root=${root}" -q --requisites "${CLOSURE_ROOT}" 2>>"${root}/verify.log" | wc -l) == "${CLOSURE_PATHS}" ]] &&
      ! grep -qiE 'error|modified|invalid' "${root}/verify.log"; then
      ok=$((ok + 1))
    else
      log "node-${i}: Nix found its store bad: $(tail -3 "${root}/verify.log")"
    fi
  done
  echo "${ok}"
}

# row_json DIR N MODE VERIFIED: the rollout's figures, one JSON object.
row_json() {
  local dir="$1" n="$2" mode="$3" verified="$4"
  local stats
  stats=$(upstream_stats)
  local i start times=() failed=0 fetched_paths=0
  start=$(cat "${dir}/start")
  for ((i = 1; i <= n; i++)); do
    times+=("$(awk -v s="${start}" -v e="$(cat "${dir}/node-${i}/end")" 'BEGIN { printf "%.2f", e - s }')")
    if [[ $(cat "${dir}/node-${i}/rc") != 0 ]] || ! tail -1 "${dir}/node-${i}/fetch.json" | jq -e .result >/dev/null 2>&1; then
      failed=$((failed + 1))
      log "${mode} N=${n}: node-${i} failed: $(tail -2 "${dir}/node-${i}/fetch.log")"
    fi
  done
  # The fetches' own accounts: bytes taken from peers and upstream.
  local sums
  sums=$(for ((i = 1; i <= n; i++)); do tail -1 "${dir}/node-${i}/fetch.json"; done |
    jq -s '{peer: (map(.result.peerBytes // 0) | add), up: (map(.result.upstreamBytes // 0) | add),
            down: (map(.result.downloaded // 0) | add), failures: (map(.result.peerFailures // 0) | add),
            refusals: (map(.result.hashRefusals // 0) | add)}' 2>/dev/null || echo '{}')
  jq -n --argjson stats "${stats}" --argjson sums "${sums}" --arg mode "${mode}" \
    --argjson n "${n}" --argjson verified "${verified}" --argjson failed "${failed}" \
    --argjson closure_file "${CLOSURE_FILE_BYTES}" --argjson closure_nar "${CLOSURE_NAR_BYTES}" \
    --argjson times "$(printf '%s\n' "${times[@]}" | jq -s 'sort')" '{
      nodes: $n, mode: $mode,
      upstream_nar_bytes: $stats.narBytes, upstream_narinfo_bytes: $stats.narinfoBytes,
      upstream_requests: $stats.requests,
      copies: ($stats.narBytes / $closure_file), nar_ratio: ($stats.narBytes / $closure_nar),
      nars_served: ($stats.nars | length), nars_served_max: ([$stats.nars[]] | max // 0),
      nars_served_twice: ([$stats.nars[] | select(. > 1)] | length),
      all_s: $times[-1], median_s: $times[(($times | length) - 1) / 2 | floor], first_s: $times[0],
      peer_bytes: ($sums.peer // null), fetch_upstream_bytes: ($sums.up // null),
      peer_failures: ($sums.failures // null), hash_refusals: ($sums.refusals // null),
      failed: $failed, verified: $verified
    }'
}

# log_row JSON
log_row() {
  jq -r '"\(.mode) N=\(.nodes): every node in \(.all_s)s (median \(.median_s)s); upstream NARs \(.upstream_nar_bytes / 1e6 * 10 | round / 10) MB = \(.copies * 100 | round / 100) copies; from peers \((.peer_bytes // 0) / 1e6 | round) MB; failed \(.failed), peer failures \(.peer_failures // 0)"' <<<"$1" >&2
}

# mem_fits N: whether N nodes' stores (tmpfs) and processes fit in the
# memory available now, MEM_RESERVE_MB kept back.
mem_fits() {
  local n="$1" avail need
  avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
  need=$((n * (CLOSURE_NAR_BYTES / 1000000 + 5 + PROC_MB_PER_NODE)))
  if ((need > avail - MEM_RESERVE_MB)); then
    STOP_REASON="N=${n} needs about ${need} MB (stores on tmpfs and ${PROC_MB_PER_NODE} MB of processes per node), more than the ${avail} MB available less ${MEM_RESERVE_MB} MB kept back"
    return 1
  fi
}

# keep_logs DIR N MODE: the logs of every node whose fetch failed or
# counted peer failures, into LOG_DIR/MODE-N/node-I (with every agent's
# log, since any may be the peer at fault).
keep_logs() {
  local dir="$1" n="$2" mode="$3" i kept=0
  for ((i = 1; i <= n; i++)); do
    if [[ $(cat "${dir}/node-${i}/rc") != 0 ]] ||
      tail -1 "${dir}/node-${i}/fetch.json" | jq -e '(.result.peerFailures // 0) > 0' >/dev/null 2>&1; then
      mkdir -p "${LOG_DIR}/${mode}-${n}/node-${i}"
      cp "${dir}/node-${i}"/fetch.{log,json} "${LOG_DIR}/${mode}-${n}/node-${i}/"
      kept=$((kept + 1))
    fi
  done
  if ((kept > 0)); then
    for ((i = 1; i <= n; i++)); do
      [[ -f "${dir}/node-${i}/agent.log" ]] || continue
      mkdir -p "${LOG_DIR}/${mode}-${n}/node-${i}"
      cp "${dir}/node-${i}/agent.log" "${LOG_DIR}/${mode}-${n}/node-${i}/"
    done
    log "${mode} N=${n}: logs of ${kept} nodes with failed fetches or peer failures in ${LOG_DIR}/${mode}-${n}"
  fi
}

# bench_n N: the peer rollout, then the upstream-only one, for N nodes.
bench_n() {
  local n="$1" dir verified=0 mode
  PORT_BASE=$(free_port_base "${n}")
  for mode in peers upstream; do
    dir="${WORK}/roots/${mode}-${n}"
    mkdir -p "${dir}"
    make_nodes "${dir}" "${n}"
    [[ "${mode}" == peers ]] && start_agents "${dir}" "${n}"
    upstream_reset
    log "${mode} N=${n}: rollout"
    rollout "${dir}" "${n}" "${mode}"
    verified=null
    if [[ "${mode}" == peers && ("${VERIFY}" == all || "${n}" == "${LARGEST}") ]]; then
      stop_agents
      log "${mode} N=${n}: verifying every node's store with nix-store --verify --check-contents"
      verified=$(verify_nodes "${dir}" "${n}")
    fi
    stop_agents
    row_json "${dir}" "${n}" "${mode}" "${verified}" >"${WORK}/rows/${n}-${mode}.json"
    log_row "$(cat "${WORK}/rows/${n}-${mode}.json")"
    keep_logs "${dir}" "${n}" "${mode}"
    remove_tree "${dir}"
  done
}

write_json() {
  jq -n --slurpfile rows <(cat "${WORK}"/rows/*.json) \
    --arg root "${CLOSURE_ROOT}" --argjson paths "${CLOSURE_PATHS}" \
    --argjson nar "${CLOSURE_NAR_BYTES}" --argjson file "${CLOSURE_FILE_BYTES}" \
    --arg rate "${RATE}" --arg nodes "${NODES}" --arg stop "${STOP_REASON}" \
    --argjson target "${TARGET_COPIES}" --arg verify "${VERIFY}" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '{
      closure: {root: $root, paths: $paths, nar_bytes: $nar, compressed_bytes: $file, compression: "zstd"},
      rate: $rate, nodes_asked: $nodes, stopped: $stop, target_copies: $target, verify: $verify,
      load_after: $load, rows: ($rows | sort_by(.nodes, .mode))
    }' >"$1"
}

main() {
  [[ $(id -u) == 0 ]] || die "run as root (a tmpfs for the node stores)"
  install_apt jq curl nix-bin iproute2
  [[ -x "${STOREPKG}" ]] || die "${STOREPKG} not found: make build"
  log "benchmark closure in ${BENCH_DIR}"
  "${REPO_ROOT}/hack/mkbench-closure.sh" "${BENCH_DIR}" >/dev/null
  CACHE="${BENCH_DIR}/cache-zstd"
  PUBLIC_KEY=$(cat "${BENCH_DIR}/public-key")
  LOG_DIR="${BENCH_DIR}/logs/peers"
  rm -rf "${LOG_DIR}"
  find_closure
  log "closure ${CLOSURE_ROOT}: ${CLOSURE_PATHS} paths, $(mb "${CLOSURE_NAR_BYTES}") MB of NARs, $(mb "${CLOSURE_FILE_BYTES}") MB zstd"
  TOKEN=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
  STOP_REASON=""

  trap cleanup EXIT
  WORK=$(mktemp -d /var/tmp/storepkg-bench-peers.XXXXXX)
  mkdir -p "${WORK}/roots" "${WORK}/rows"
  local total=0 n
  for n in ${NODES}; do ((n > total)) && total=${n}; done
  mount -t tmpfs -o "size=$((total * (CLOSURE_NAR_BYTES / 1000000 + 10) + 512))m,mode=0755" storepkg-bench-peers "${WORK}/roots"
  start_upstream
  cat "${CACHE}"/nar/* >/dev/null # the page cache, warm for every N alike

  # The largest N that fits is the one verified.
  LARGEST=0
  for n in ${NODES}; do
    mem_fits "${n}" && ((n > LARGEST)) && LARGEST=${n}
  done
  STOP_REASON=""
  for n in ${NODES}; do
    if ! mem_fits "${n}"; then
      log "stopping before N=${n}: ${STOP_REASON}"
      break
    fi
    bench_n "${n}"
  done

  if [[ -n "${RESULTS_JSON}" ]]; then
    write_json "${RESULTS_JSON}"
    log "results in ${RESULTS_JSON}"
  else
    write_json /dev/stdout
  fi
  if jq -e '[.rows[] | .failed] | add > 0' <(cat "${WORK}"/rows/*.json | jq -s '{rows: .}') >/dev/null; then
    log "some fetches failed: logs in ${LOG_DIR}"
  fi
}

main "$@"; exit
