#!/usr/bin/env bash
# Copyright 2025 The storepkg Authors.
#
# bench-fetch.sh: `storepkg fetch` against Nix's own substituter
# (`nix-store -r` into a chroot store): the same closure from the same local
# binary cache, xz and zstd. Prints the ratio nix/storepkg, the peak RSS and
# the CPU time of each. The cold fetch benchmark of `make bench`
# (hack/bench.sh), which reads RESULTS_JSON.
#
# Usage: hack/bench-fetch.sh            (or: make bench-fetch)
#
# Every run substitutes the whole closure (hack/mkbench-closure.sh: ~130
# paths, ~350 MB) into a fresh, empty chroot store. Nix runs twice over:
#   nix       its default configuration (max-jobs = 1: one substitution at a
#             time); the targets are ratios against this one
#   nix -j    --max-jobs auto (as NixOS configures it): parallel substitutions
# Below them: the decode limit, every compressed NAR of the cache piped by
# `xz -dc`/`zstd -dc` to /dev/null on all cores, and the largest NAR alone.
#
# The fresh stores live on a tmpfs by default: ext4 here spends from 0.2 to
# 2.5 s of kernel time creating the closure's ~10,000 inodes depending on what
# was deleted before, which drowns the difference between the tools.
#
# Environment:
#   BENCH_DIR     where the closure and its caches live (made on first use,
#                 ~1.2 GB, kept), default /var/tmp/storepkg-bench
#   STOREPKG      the binary to measure, default ./bin/storepkg
#   STOREPKG_BASE another storepkg binary (an older build) measured in the
#                 same interleaving, for before/after figures; a table row
#                 only, not in RESULTS_JSON
#   RUNS          runs per tool and compression, default 3 (best and median)
#   COMPRESSIONS  default "xz zstd"
#   NIX_ONLY=1    measure Nix and the decode limit only (no storepkg binary)
#   NIX_PARALLEL  0 skips the "nix -j" runs, default 1
#   ROOTS_FS      tmpfs (default) or disk: where the fresh stores are made
#   ROOTS_DIR     where the fresh stores are made, default BENCH_DIR/roots
#                 (another directory lets two runs share one BENCH_DIR)
#   IDLE_WAIT     seconds to wait for an idle machine before each run, 120
#   RESULTS       a file to append the table to (default: none, print only)
#   RESULTS_JSON  a file to write the medians to as JSON (hack/bench.sh)
#
# Targets: storepkg >= 1.5x faster than Nix on xz, >= 2x on zstd.

set -o errexit -o nounset -o pipefail -o errtrace

LOG_PREFIX=bench-fetch
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/storepkg-bench}"
STOREPKG="${STOREPKG:-${REPO_ROOT}/bin/storepkg}"
STOREPKG_BASE="${STOREPKG_BASE:-}"
RUNS="${RUNS:-3}"
COMPRESSIONS="${COMPRESSIONS:-xz zstd}"
NIX_ONLY="${NIX_ONLY:-0}"
NIX_PARALLEL="${NIX_PARALLEL:-1}"
ROOTS_FS="${ROOTS_FS:-tmpfs}"
IDLE_WAIT="${IDLE_WAIT:-120}"
RESULTS="${RESULTS:-}"
RESULTS_JSON="${RESULTS_JSON:-}"

declare -A TARGET=([xz]=1.5 [zstd]=2.0)
declare -A DECOMPRESS=([xz]="xz -dc" [zstd]="zstd -dc")
declare -A SUFFIX=([xz]=.nar.xz [zstd]=.nar.zst)
declare -A LABEL=(
  [nix]="nix-store -r (Nix default, max-jobs=1)"
  [nix_par]="nix-store -r --max-jobs auto"
  [storepkg]="storepkg fetch"
  [storepkg_base]="storepkg fetch (STOREPKG_BASE)"
)

ROOTS_DIR="${ROOTS_DIR:-${BENCH_DIR}/roots}"
LOG_DIR="${BENCH_DIR}/logs"
BUSY_RUNS=0

trap 'echo "ERROR: ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2' ERR


ensure_tools() {
  install_apt time
  if [[ "${NIX_ONLY}" != 1 && ! -x "${STOREPKG}" ]]; then
    die "${STOREPKG} not found: build it first (make build), set STOREPKG, or run with NIX_ONLY=1"
  fi
}

# ---------------------------------------------------------------------------
# Fresh roots

# Roots hold read-only dirs (store paths): make them writable first.
remove_tree() {
  chmod -R u+w "$1" 2>/dev/null || true
  rm -rf "$1"
}

setup_roots() {
  cleanup
  mkdir -p "${ROOTS_DIR}" "${LOG_DIR}"
  if [[ "${ROOTS_FS}" == tmpfs ]]; then
    if ! mount -t tmpfs -o size=4g,mode=0755 storepkg-bench "${ROOTS_DIR}" 2>/dev/null; then
      log "warning: cannot mount a tmpfs on ${ROOTS_DIR} (not root?); using the disk"
      ROOTS_FS=disk
    fi
  fi
}

cleanup() {
  # Also a tmpfs left mounted by an interrupted run.
  while mountpoint -q "${ROOTS_DIR}"; do
    umount "${ROOTS_DIR}"
  done
  if [[ -d "${ROOTS_DIR}" ]]; then
    remove_tree "${ROOTS_DIR}"
  fi
}

# On disk, deleting a root slows down the next run's inode creation: keep
# the roots until the end (~400 MB each).
done_with_root() {
  if [[ "${ROOTS_FS}" == tmpfs ]]; then
    remove_tree "$1"
  fi
}

# ---------------------------------------------------------------------------
# Measuring

# wait_idle: other work on the machine skews the numbers. Waits, up to
# IDLE_WAIT seconds, for a 2-second window with >= 90% idle CPU.
wait_idle() {
  local deadline=$((SECONDS + IDLE_WAIT)) a b
  while ((SECONDS < deadline)); do
    read -ra a < <(head -1 /proc/stat)
    sleep 2
    read -ra b < <(head -1 /proc/stat)
    local total=0 k
    for k in 1 2 3 4 5 6 7 8; do total=$((total + b[k] - a[k])); done
    if (((b[4] - a[4]) * 100 >= total * 90)); then
      return 0
    fi
  done
  log "warning: the machine stayed busy for ${IDLE_WAIT}s; measuring anyway"
  BUSY_RUNS=$((BUSY_RUNS + 1))
}

# nix_cmd / nix_par_cmd / storepkg_cmd COMP ROOT: set CMD to the command that
# substitutes the whole closure from cache-COMP into the empty store ROOT.
nix_cmd() {
  local comp="$1" root="$2"
  # The project's Nix configuration, with a private cache (no narinfo
  # lookups cached by an earlier run) and the database synced as Nix's
  # default does and storepkg's store does (SQLite synchronous=NORMAL).
  CMD=(env "${NIX_ENV[@]}" "XDG_CACHE_HOME=${root}/.cache"
    nix-store --store "local?root=${root}" -r "${CLOSURE_ROOT}"
    --option fsync-metadata true
    --option substituters "file://${BENCH_DIR}/cache-${comp}"
    --option trusted-public-keys "${PUBLIC_KEY}")
}

nix_par_cmd() {
  nix_cmd "$@"
  CMD+=(--max-jobs auto)
}

storepkg_cmd() {
  local comp="$1" root="$2"
  CMD=("${STOREPKG}" fetch --root "${root}"
    --substituter "file://${BENCH_DIR}/cache-${comp}"
    --trusted-public-key "${PUBLIC_KEY}"
    "${CLOSURE_ROOT}")
}

storepkg_base_cmd() {
  storepkg_cmd "$@"
  CMD[0]="${STOREPKG_BASE}"
}

# timed_run LOGFILE CMD...: runs CMD under /usr/bin/time, its output going to
# LOGFILE, and prints "SECONDS PEAK_RSS_KB USER_S SYS_S".
timed_run() {
  local logfile="$1"; shift
  local tf
  tf=$(mktemp)
  sync
  if ! /usr/bin/time -f '%e %M %U %S' -o "${tf}" "$@" >"${logfile}" 2>&1; then
    echo "--- $* failed; last lines of ${logfile}:" >&2
    tail -20 "${logfile}" >&2
    rm -f "${tf}"
    return 1
  fi
  tail -1 "${tf}"
  rm -f "${tf}"
}

# check_root TOOL ROOT: the fetched store must hold every path of the closure.
check_root() {
  local tool="$1" root="$2" n
  n=$(find "${root}/nix/store" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l)
  if ((n < CLOSURE_PATHS)); then
    die "${tool} left ${n} of ${CLOSURE_PATHS} store paths in ${root}"
  fi
}

# measure TOOL COMP RUN: one run into a fresh root; appends "secs rss_kb
# user_s sys_s" to the tool's sample file.
measure() {
  local tool="$1" comp="$2" run="$3"
  local root logfile sample
  root=$(mktemp -d "${ROOTS_DIR}/${tool}-${comp}.XXXX")
  logfile="${LOG_DIR}/${tool}-${comp}-${run}.log"
  "${tool}_cmd" "${comp}" "${root}"
  wait_idle
  sample=$(timed_run "${logfile}" "${CMD[@]}")
  check_root "${tool}" "${root}"
  done_with_root "${root}"
  echo "${sample}" >>"${SAMPLES}/${tool}-${comp}"
  log "${comp} ${tool} run ${run}: $(awk '{ printf "%ss, peak RSS %d MB, CPU %.2fs", $1, $2 / 1024, $3 + $4 }' <<<"${sample}")"
}

elapsed_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }'; }

nars_largest_first() {
  find "${BENCH_DIR}/cache-$1/nar" -name "*${SUFFIX[$1]}" -printf '%s %p\n' | sort -rn | cut -d' ' -f2-
}

# decode_limit COMP: every compressed NAR of the cache decompressed to
# /dev/null by the reference tool on all cores, largest first; prints
# "SECONDS CPU_SECONDS".
decode_limit() {
  local comp="$1" tf
  tf=$(mktemp)
  # shellcheck disable=SC2086 # the command and its flags, one word each
  nars_largest_first "${comp}" |
    /usr/bin/time -f '%e %U %S' -o "${tf}" xargs -d '\n' -P "$(nproc)" -n 1 ${DECOMPRESS[${comp}]} >/dev/null
  tail -1 "${tf}" | awk '{ printf "%s %.2f\n", $1, $2 + $3 }'
  rm -f "${tf}"
}

# largest_nar COMP: the largest NAR alone, one stream: a fetch that decodes
# each NAR in one stream takes at least this long.
largest_nar() {
  local comp="$1" f start
  f=$(nars_largest_first "${comp}" | awk 'NR == 1')
  start=$(date +%s.%N)
  ${DECOMPRESS[${comp}]} "${f}" >/dev/null
  elapsed_since "${start}"
}

bench_compression() {
  local comp="$1" run tool tools=(nix)
  [[ "${NIX_PARALLEL}" == 1 ]] && tools+=(nix_par)
  [[ "${NIX_ONLY}" == 1 ]] || tools+=(storepkg)
  [[ "${NIX_ONLY}" == 1 || -z "${STOREPKG_BASE}" ]] || tools+=(storepkg_base)
  log "${comp}: warming the page cache"
  cat "${BENCH_DIR}/cache-${comp}"/nar/* >/dev/null
  # Interleaved, so that a drift of the machine hits every tool alike.
  for ((run = 1; run <= RUNS; run++)); do
    for tool in "${tools[@]}"; do
      measure "${tool}" "${comp}" "${run}"
    done
  done
  wait_idle
  decode_limit "${comp}" >"${SAMPLES}/limit-${comp}"
  wait_idle
  largest_nar "${comp}" >"${SAMPLES}/largest-${comp}"
  log "${comp} decode limit: $(cut -d' ' -f1 "${SAMPLES}/limit-${comp}")s on $(nproc) cores (CPU $(cut -d' ' -f2 "${SAMPLES}/limit-${comp}")s)," \
    "largest NAR alone $(cat "${SAMPLES}/largest-${comp}")s"
}

# ---------------------------------------------------------------------------
# Report

best() { sort -n | awk 'NR == 1'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
max() { sort -n | tail -1; }

# stat_of TOOL COMP best|median|max time|rss  (rss in MB; "-" if not measured)
stat_of() {
  local f="${SAMPLES}/$1-$2"
  if [[ ! -s "${f}" ]]; then
    echo "-"
  elif [[ "$4" == rss ]]; then
    cut -d' ' -f2 "${f}" | "$3" | awk '{ printf "%d", $1 / 1024 }'
  else
    cut -d' ' -f1 "${f}" | "$3"
  fi
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2fx", a / b; else print "" }'
}

tool_row() {
  local tool="$1" comp="$2"
  local cells=("${comp}" "${LABEL[${tool}]}"
    "$(stat_of "${tool}" "${comp}" best time)" "$(stat_of "${tool}" "${comp}" median time)"
    "$(cpu_of "${tool}" "${comp}")" "$(stat_of "${tool}" "${comp}" max rss)")
  if [[ "${tool}" == storepkg ]]; then
    local nm sm
    nm=$(stat_of nix "${comp}" median time)
    sm=$(stat_of storepkg "${comp}" median time)
    cells+=("$(ratio "$(stat_of nix "${comp}" best time)" "$(stat_of storepkg "${comp}" best time)")"
      "$(ratio "${nm}" "${sm}")"
      "$(ratio "$(stat_of nix_par "${comp}" median time)" "${sm}")"
      "$(awk -v a="${nm}" -v b="${sm}" -v t="${TARGET[${comp}]}" \
        'BEGIN { printf "%s (>= %.1fx)", (a / b >= t ? "PASS" : "FAIL"), t }')")
  else
    cells+=("" "" "" "")
  fi
  local IFS='|'
  echo "|${cells[*]}|" | sed 's/|/ | /g; s/^ //; s/ $//'
}

report() {
  local version="(not measured)" commit
  [[ "${NIX_ONLY}" == 1 ]] || version=$("${STOREPKG}" version 2>/dev/null | head -1 || true)
  commit=$(git -C "${REPO_ROOT}" rev-parse --short HEAD 2>/dev/null || echo none)
  echo "## bench-fetch $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Closure: $(sed -n 's/^store paths: *//p' "${BENCH_DIR}/stats.txt") store paths," \
    "$(sed -n 's/^NAR bytes: *[0-9]* (\(.*\))/\1/p' "${BENCH_DIR}/stats.txt") unpacked;" \
    "local file:// cache; ${RUNS} runs each into a fresh store on ${ROOTS_FS}; warm page cache."
  echo "Host: $(nproc) cores, $(awk '/^MemTotal:/ { print int($2 / 1048576) }' /proc/meminfo) GiB; $(nix --version);" \
    "xz $(xz --version | awk 'NR == 1 { print $4 }'); zstd $(zstd --version | grep -o 'v[0-9.]*');" \
    "storepkg ${version:-?} at ${commit}."
  if ((BUSY_RUNS > 0)); then
    echo "Warning: ${BUSY_RUNS} measurements ran on a busy machine."
  fi
  echo
  echo "| compression | tool | best s | median s | CPU s (median) | peak RSS MB | nix/storepkg best | nix/storepkg median | nix -j auto/storepkg median | target (median) |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  local comp tool
  for comp in ${COMPRESSIONS}; do
    for tool in nix nix_par storepkg_base storepkg; do
      if [[ -s "${SAMPLES}/${tool}-${comp}" ]]; then
        tool_row "${tool}" "${comp}"
      fi
    done
    echo "| ${comp} | decode limit: \`${DECOMPRESS[${comp}]}\` on $(nproc) cores, all NARs | $(cut -d' ' -f1 "${SAMPLES}/limit-${comp}") | | $(cut -d' ' -f2 "${SAMPLES}/limit-${comp}") | | | | | |"
    echo "| ${comp} | \`${DECOMPRESS[${comp}]}\`, largest NAR alone | $(cat "${SAMPLES}/largest-${comp}") | | | | | | | |"
  done
  echo
}

# cpu_of TOOL COMP: median user+sys seconds.
cpu_of() {
  local f="${SAMPLES}/$1-$2"
  if [[ -s "${f}" ]]; then awk '{ print $3 + $4 }' "${f}" | median; else echo null; fi
}

num_or_null() { if [[ "$1" == "-" || -z "$1" ]]; then echo null; else echo "$1"; fi; }

# write_json FILE: the medians, for hack/bench.sh's results table.
write_json() {
  local comp tool first=1
  {
    echo "{"
    echo "  \"closure_paths\": ${CLOSURE_PATHS},"
    echo "  \"nar_bytes\": $(sed -n 's/^NAR bytes: *\([0-9]*\).*/\1/p' "${BENCH_DIR}/stats.txt"),"
    echo "  \"files\": \"$(sed -n 's/^file bytes: *//p' "${BENCH_DIR}/stats.txt")\","
    echo "  \"runs\": ${RUNS}, \"roots_fs\": \"${ROOTS_FS}\", \"busy_runs\": ${BUSY_RUNS},"
    echo "  \"nix_version\": \"$(nix --version | awk '{ print $NF }')\","
    echo "  \"compressions\": {"
    for comp in ${COMPRESSIONS}; do
      ((first)) || echo "    ,"
      first=0
      echo "    \"${comp}\": {"
      echo "      \"compressed_bytes\": $(sed -n "s/^cache-${comp}: *\([0-9]*\).*/\1/p" "${BENCH_DIR}/stats.txt"),"
      for tool in nix nix_par storepkg; do
        echo "      \"${tool}\": {\"median_s\": $(num_or_null "$(stat_of "${tool}" "${comp}" median time)"), \"best_s\": $(num_or_null "$(stat_of "${tool}" "${comp}" best time)"), \"peak_rss_mb\": $(num_or_null "$(stat_of "${tool}" "${comp}" max rss)"), \"cpu_s\": $(cpu_of "${tool}" "${comp}")},"
      done
      echo "      \"limit_s\": $(cut -d' ' -f1 "${SAMPLES}/limit-${comp}"), \"limit_cpu_s\": $(cut -d' ' -f2 "${SAMPLES}/limit-${comp}"),"
      echo "      \"largest_nar_s\": $(cat "${SAMPLES}/largest-${comp}")"
      echo "    }"
    done
    echo "  }"
    echo "}"
  } >"$1"
}

main() {
  ensure_tools
  log "closure and caches in ${BENCH_DIR}"
  "${REPO_ROOT}/hack/mkbench-closure.sh" "${BENCH_DIR}" >/dev/null
  CLOSURE_ROOT=$(cat "${BENCH_DIR}/root-path")
  PUBLIC_KEY=$(cat "${BENCH_DIR}/public-key")
  CLOSURE_PATHS=$(sed -n 's/^store paths: *\([0-9]*\).*/\1/p' "${BENCH_DIR}/stats.txt")

  trap cleanup EXIT
  setup_roots
  SAMPLES=$(mktemp -d "${ROOTS_DIR}/samples.XXXX")
  log "fresh stores on ${ROOTS_FS} under ${ROOTS_DIR}"

  local comp
  for comp in ${COMPRESSIONS}; do
    bench_compression "${comp}"
  done

  local table
  table=$(report)
  echo
  echo "${table}"
  if [[ -n "${RESULTS}" ]]; then
    mkdir -p "$(dirname "${RESULTS}")"
    echo "${table}" >>"${RESULTS}"
    log "appended to ${RESULTS}"
  fi
  if [[ -n "${RESULTS_JSON}" ]]; then
    write_json "${RESULTS_JSON}"
    log "medians in ${RESULTS_JSON}"
  fi
  echo
  log "logs in ${LOG_DIR}"
}

main "$@"
