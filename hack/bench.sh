#!/usr/bin/env bash
# bench.sh: `make bench`. Every benchmark, each side by side with its peer
# in the same run, into one results file, bench/results/latest.md (also
# printed): the machine, the versions, the load, one summary table with
# every target judged met or missed, and why where missed.
#
#   name     what                                               measured by
#   fetch    cold fetch: storepkg fetch vs nix-store -r         hack/bench-fetch.sh
#            (default and --max-jobs auto), two closures, xz and
#            zstd, with the decode limit
#   pods     cold pod start: storepkg vs an OCI pull            BenchmarkPods/cold
#            warm pod start: storepkg vs runc                   BenchmarkPods/warm
#            shim memory: storepkg's shim vs runc's shim        BenchmarkPods/memory
#   start    closure-size scaling, warm create+start            BenchmarkStart
#   sharing  ten pods: bytes transferred and on disk            BenchmarkSharing
#   view     the store view's share of a cold pod start,       BenchmarkViewCost
#            100,000-file closure already in the node store
#   peers    one closure rolled out to 10, 30, 100 nodes at     hack/bench-peers.sh
#            once through a bandwidth-limited upstream: with
#            peer sharing vs from upstream alone
#
# Usage: hack/bench.sh   (or make bench; make bench-fetch, bench-pods,
# bench-start, bench-sharing, bench-view and bench-peers run one benchmark
# and write elsewhere)
#
# Environment:
#   BENCHMARKS which to run, by name: any of "fetch pods start sharing view peers"
#              (default all); only a full run writes bench/results/latest.md.
#              ROWS is accepted as another name for it.
#   OUT        the results file (default bench/results/latest.md for a full
#              run, $BENCH_DIR/results/latest-<names>.md otherwise)
#   RUNS       runs per variant (default 5; the cold fetch's own default is 3)
#   BENCH_FS   tmpfs (default) or disk: where containerd's root and state, the
#              node store and the images live while measuring. ext4 on these
#              VMs (mounted with discard) costs 0.2-2 ms per inode created or
#              deleted, which swamps the timings; tmpfs keeps them stable.
#   BENCH_DIR  the benchmark closure and its caches (hack/mkbench-closure.sh),
#              default /var/tmp/storepkg-bench; raw results are kept there
#   BENCH_DIR_PYGO  the cold fetch's second closure and its caches
#              (hack/mkbench-closure-pygo.sh), default /var/tmp/storepkg-bench-pygo
#   IDLE_WAIT  seconds each measurement waits for a quiet CPU (default 15)
set -o errexit -o nounset -o pipefail -o errtrace

LOG_PREFIX=bench
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ALL_BENCHMARKS="fetch pods start sharing view peers"
BENCHMARKS="${BENCHMARKS:-${ROWS:-${ALL_BENCHMARKS}}}"
RUNS="${RUNS:-5}"
BENCH_FS="${BENCH_FS:-tmpfs}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/storepkg-bench}"
BENCH_DIR_PYGO="${BENCH_DIR_PYGO:-/var/tmp/storepkg-bench-pygo}"
IDLE_WAIT="${IDLE_WAIT:-15}"
if [[ "${BENCHMARKS}" == "${ALL_BENCHMARKS}" ]]; then
  OUT="${OUT:-${REPO_ROOT}/bench/results/latest.md}"
else
  OUT="${OUT:-${BENCH_DIR}/results/latest-${BENCHMARKS// /-}.md}"
fi

SCRATCH=""
SAMPLER_PID=""

trap 'echo "ERROR: ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2' ERR


cleanup() {
  if [[ -n "${SAMPLER_PID}" ]]; then
    kill "${SAMPLER_PID}" 2>/dev/null || true
    wait "${SAMPLER_PID}" 2>/dev/null || true
  fi
  if [[ -n "${SCRATCH}" && -d "${SCRATCH}" ]]; then
    local i
    for i in 1 2 3 4 5; do
      mountpoint -q "${SCRATCH}" || break
      umount "${SCRATCH}" 2>/dev/null || sleep 1
    done
    if mountpoint -q "${SCRATCH}"; then
      log "warning: ${SCRATCH} still busy, unmounting lazily"
      umount -l "${SCRATCH}" || true
    fi
    chmod -R u+w "${SCRATCH}" 2>/dev/null || true
    rm -rf "${SCRATCH}"
  fi
}

# sample_load records the highest 1-minute load average seen, every 5 s.
sample_load() {
  local file="$1" max=0 l
  while true; do
    l=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v a="${l}" -v b="${max}" 'BEGIN { exit !(a > b) }'; then
      max=${l}
      echo "${max}" >"${file}"
    fi
    sleep 5
  done
}

has_bench() { [[ " ${BENCHMARKS} " == *" $1 "* ]]; }

versions_json() {
  local commit dirty
  commit=$(git -C "${REPO_ROOT}" rev-parse --short=12 HEAD)
  # Tracked code that differs from the commit (others may be editing the
  # same working tree): it is what was measured.
  dirty=$(git -C "${REPO_ROOT}" status --porcelain --untracked-files=no -- cmd pkg internal go.mod go.sum | awk '{ print $2 }' | paste -sd' ' -)
  cat <<EOF
{
  "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
  "cores": $(nproc),
  "cpu": "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)",
  "mem_gib": "$(awk '/^MemTotal:/ { print int($2 / 1048576) }' /proc/meminfo)",
  "kernel": "$(uname -r)",
  "load_before": "${LOAD_BEFORE}",
  "load_after": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "load_max": "$(cat "${SCRATCH}/load-max" 2>/dev/null || echo "?")",
  "fs": "$([[ ${BENCH_FS} == tmpfs ]] && echo "tmpfs" || echo "ext4 disk ($(findmnt -n -o FSTYPE,OPTIONS --target "${SCRATCH}" | cut -c1-60))")",
  "runs": ${RUNS},
  "rows": "${BENCHMARKS}",
  "duration_s": $((SECONDS - START)),
  "dirty": "${dirty}",
  "raw": "${KEEP}",
  "versions": {
    "storepkg": "${commit}",
    "containerd": "$(basename "$(dirname "$(command -v containerd)")" | sed 's/^containerd-//')",
    "runc": "$(runc --version | awk 'NR == 1 { print $3 }')",
    "crictl": "$(basename "$(dirname "$(command -v crictl)")" | sed 's/^crictl-//')",
    "nix": "$(nix --version | awk '{ print $NF }')",
    "go": "$(go version | awk '{ print $3 }')"
  }
}
EOF
}

main() {
  START=${SECONDS}
  [[ $(id -u) == 0 ]] || die "run as root (containerd, mounts)"
  # shellcheck disable=SC1091
  source "${STOREPKG_TOOLS:-/var/cache/storepkg/tools}/env.sh"
  [[ -x "${REPO_ROOT}/bin/storepkg" ]] || die "bin/storepkg missing: make build"
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  log "benchmarks: ${BENCHMARKS}; load ${LOAD_BEFORE}; $(nproc) cores"

  log "benchmark closure in ${BENCH_DIR}"
  "${REPO_ROOT}/hack/mkbench-closure.sh" "${BENCH_DIR}" >/dev/null

  trap cleanup EXIT
  # Short: critest puts unix sockets under it (TMPDIR).
  SCRATCH=$(mktemp -d /tmp/spb.XXXXXX)
  if [[ "${BENCH_FS}" == tmpfs ]]; then
    mount -t tmpfs -o size=16g,mode=0755 storepkg-bench "${SCRATCH}"
  fi
  mkdir -p "${SCRATCH}/out"
  sample_load "${SCRATCH}/load-max" &
  SAMPLER_PID=$!

  if has_bench fetch; then
    log "cold fetch (hack/bench-fetch.sh)"
    STOREPKG="${REPO_ROOT}/bin/storepkg" IDLE_WAIT="${IDLE_WAIT}" RESULTS_JSON="${SCRATCH}/out/fetch.json" \
      BENCH_DIR="${BENCH_DIR}" BENCH_DIR_PYGO="${BENCH_DIR_PYGO}" "${REPO_ROOT}/hack/bench-fetch.sh" >&2
  fi

  local benches=()
  has_bench pods && benches+=(BenchmarkPods)
  has_bench start && benches+=(BenchmarkStart)
  has_bench sharing && benches+=(BenchmarkSharing)
  has_bench view && benches+=(BenchmarkViewCost)
  if ((${#benches[@]} > 0)); then
    local pattern
    pattern=$(IFS='|'; echo "${benches[*]}")
    log "pod benchmarks: go test -bench '^(${pattern})\$' ./integration"
    # CGO_ENABLED=0: the shims under test are static, as install-deps
    # builds containerd-shim-runc-v2 and the installer image ships ours.
    (cd "${REPO_ROOT}/integration" && CGO_ENABLED=0 TMPDIR="${SCRATCH}" STOREPKG_BENCH_OUT="${SCRATCH}/out" STOREPKG_BENCH_RUNS="${RUNS}" \
      STOREPKG_BENCH_DIR="${BENCH_DIR}" STOREPKG_BENCH_IDLE_WAIT="${IDLE_WAIT}s" \
      go test . -run '^$' -bench "^(${pattern})\$" -benchtime 1x -count 1 -timeout 90m -v) >"${SCRATCH}/gotest.log" 2>&1 || {
      tail -60 "${SCRATCH}/gotest.log" >&2
      die "the pod benchmarks failed (log above)"
    }
    grep -E '^(Benchmark|    [a-z_]+_test.go)' "${SCRATCH}/gotest.log" >&2 || true
  fi

  if has_bench peers; then
    log "peer sharing at scale (hack/bench-peers.sh)"
    STOREPKG="${REPO_ROOT}/bin/storepkg" RESULTS_JSON="${SCRATCH}/out/peers.json" \
      BENCH_DIR="${BENCH_DIR}" "${REPO_ROOT}/hack/bench-peers.sh" >&2
  fi

  KEEP="${BENCH_DIR}/results/$(date -u +%Y%m%d-%H%M%S)"
  local keep="${KEEP}"
  versions_json >"${SCRATCH}/out/env.json"
  mkdir -p "${keep}" "$(dirname "${OUT}")"
  cp "${SCRATCH}"/out/*.json "${keep}/"
  [[ -f "${SCRATCH}/gotest.log" ]] && cp "${SCRATCH}/gotest.log" "${keep}/"
  (cd "${REPO_ROOT}/integration" && go run ./cmd/benchreport -in "${keep}" -o "${OUT}")
  log "wrote ${OUT} in $((SECONDS - START))s; raw results in ${keep}"
}

main "$@"
