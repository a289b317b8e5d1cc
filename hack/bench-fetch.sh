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
# Two closures, unlike in shape:
#   mixed   hack/mkbench-closure.sh: ~130 paths, ~350 MB of NARs: libraries,
#           interpreters, data paths of thousands of small files
#   pygo    hack/mkbench-closure-pygo.sh: ~320 paths, ~700 MB: a Go
#           toolchain of ~12,000 files in one path, CPython, ~310
#           single-library paths
# Every run substitutes a whole closure into a fresh, empty chroot store.
# Nix runs twice over:
#   nix       its default configuration (max-jobs = 1: one substitution at a
#             time)
#   nix -j    --max-jobs auto (as NixOS configures it): parallel substitutions
# Below them: the decode limit, the decoding work alone on every core (the
# NARs split into one share per core of about equal compressed size, one
# `xz -dc`/`zstd -dc` process per share reading its NARs in sequence, all
# shares at once: the slowest share's wall time, the CPU time of all), and
# the largest NAR alone, one stream.
#
# The fresh stores live on a tmpfs by default: ext4 here spends from 0.2 to
# 2.5 s of kernel time creating the closure's ~10,000 inodes depending on what
# was deleted before, which drowns the difference between the tools.
#
# Environment:
#   BENCH_DIR     where the mixed closure and its caches live (made on first
#                 use, ~1.2 GB, kept), default /var/tmp/storepkg-bench; the
#                 fresh stores and logs are made under it too
#   BENCH_DIR_PYGO  the same for the pygo closure (~2.5 GB), default
#                 /var/tmp/storepkg-bench-pygo
#   CLOSURES      default "mixed pygo"
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
# Targets, every closure and compression: wall time >= 1.2x faster than
# `nix -j`, CPU time (user+sys) at most `nix -j`'s, within 1.15x of the
# decode limit; and >= 1.5x faster than Nix's default on xz, >= 2x on zstd.

set -o errexit -o nounset -o pipefail -o errtrace

LOG_PREFIX=bench-fetch
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/storepkg-bench}"
BENCH_DIR_PYGO="${BENCH_DIR_PYGO:-/var/tmp/storepkg-bench-pygo}"
CLOSURES="${CLOSURES:-mixed pygo}"
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
PAR_TARGET=1.2   # wall time, nix -j / storepkg
LIMIT_TARGET=1.15 # wall time, storepkg / decode limit
declare -A CLOSURE_DIR=([mixed]="${BENCH_DIR}" [pygo]="${BENCH_DIR_PYGO}")
declare -A CLOSURE_SCRIPT=([mixed]=mkbench-closure.sh [pygo]=mkbench-closure-pygo.sh)
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
    --option substituters "file://${CDIR}/cache-${comp}"
    --option trusted-public-keys "${PUBLIC_KEY}")
}

nix_par_cmd() {
  nix_cmd "$@"
  CMD+=(--max-jobs auto)
}

storepkg_cmd() {
  local comp="$1" root="$2"
  CMD=("${STOREPKG}" fetch --root "${root}"
    --substituter "file://${CDIR}/cache-${comp}"
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
  root=$(mktemp -d "${ROOTS_DIR}/${CLOSURE}-${tool}-${comp}.XXXX")
  logfile="${LOG_DIR}/${CLOSURE}-${tool}-${comp}-${run}.log"
  "${tool}_cmd" "${comp}" "${root}"
  wait_idle
  sample=$(timed_run "${logfile}" "${CMD[@]}")
  check_root "${tool}" "${root}"
  done_with_root "${root}"
  echo "${sample}" >>"${SAMPLES}/${tool}-${comp}"
  log "${CLOSURE} ${comp} ${tool} run ${run}: $(awk '{ printf "%ss, peak RSS %d MB, CPU %.2fs (user %.2f, sys %.2f)", $1, $2 / 1024, $3 + $4, $3, $4 }' <<<"${sample}")"
}

elapsed_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }'; }

# nars_by_size COMP: "BYTES FILE" of every compressed NAR, largest first.
nars_by_size() {
  find "${CDIR}/cache-$1/nar" -name "*${SUFFIX[$1]}" -printf '%s %p\n' | sort -rn
}

# decode_limit COMP: the decoding work alone on every core, as a fetch
# that decodes each NAR in one stream could at best spread it. The NARs
# are dealt into one share per core, largest first, each to the share with
# the fewest compressed bytes so far; each share is one decoder process
# reading its NARs in sequence to /dev/null, all shares at once (one
# process per NAR would add a process start per NAR, seconds over hundreds
# of small NARs, which is not decoding). Prints "SECONDS CPU_SECONDS": the
# wall time until the last share is done, the user+sys time of all.
decode_limit() {
  local comp="$1" tf shares
  tf=$(mktemp)
  shares=$(mktemp)
  nars_by_size "${comp}" | awk -v n="$(nproc)" '
    {
      best = 1
      for (i = 2; i <= n; i++) if (sum[i] < sum[best]) best = i
      sum[best] += $1
      files[best] = files[best] " " $2
    }
    END { for (i = 1; i <= n; i++) if (files[i] != "") print substr(files[i], 2) }' >"${shares}"
  # shellcheck disable=SC2016 # expanded by the inner shell
  /usr/bin/time -f '%e %U %S' -o "${tf}" bash -c '
    pids=()
    while read -r -a nars; do
      '"${DECOMPRESS[${comp}]}"' "${nars[@]}" >/dev/null &
      pids+=($!)
    done <"$1"
    for p in "${pids[@]}"; do wait "${p}" || exit 1; done' _ "${shares}" ||
    die "decoding the ${comp} NARs of ${CDIR} failed"
  tail -1 "${tf}" | awk -v shares="$(wc -l <"${shares}")" '{ printf "%s %.2f %d\n", $1, $2 + $3, shares }'
  rm -f "${tf}" "${shares}"
}

# largest_nar COMP: the largest NAR alone, one stream: a fetch that decodes
# each NAR in one stream takes at least this long. Prints "SECONDS BYTES".
largest_nar() {
  local comp="$1" size f start
  read -r size f <<<"$(nars_by_size "${comp}" | awk 'NR == 1')"
  start=$(date +%s.%N)
  ${DECOMPRESS[${comp}]} "${f}" >/dev/null
  echo "$(elapsed_since "${start}") ${size}"
}

bench_compression() {
  local comp="$1" run tool tools=(nix)
  [[ "${NIX_PARALLEL}" == 1 ]] && tools+=(nix_par)
  [[ "${NIX_ONLY}" == 1 ]] || tools+=(storepkg)
  [[ "${NIX_ONLY}" == 1 || -z "${STOREPKG_BASE}" ]] || tools+=(storepkg_base)
  log "${CLOSURE} ${comp}: warming the page cache"
  cat "${CDIR}/cache-${comp}"/nar/* >/dev/null
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
  log "${CLOSURE} ${comp} decode limit: $(cut -d' ' -f1 "${SAMPLES}/limit-${comp}")s on $(nproc) cores (CPU $(cut -d' ' -f2 "${SAMPLES}/limit-${comp}")s)," \
    "largest NAR alone $(cut -d' ' -f1 "${SAMPLES}/largest-${comp}")s"
}

# use_closure NAME: makes NAME's closure and caches if needed and points
# CLOSURE, CDIR, CLOSURE_ROOT, PUBLIC_KEY, CLOSURE_PATHS and SAMPLES at it.
use_closure() {
  CLOSURE="$1"
  CDIR="${CLOSURE_DIR[$1]:-}"
  [[ -n "${CDIR}" ]] || die "unknown closure $1 in CLOSURES (known: ${!CLOSURE_DIR[*]})"
  CLOSURE_ROOT=$(cat "${CDIR}/root-path")
  PUBLIC_KEY=$(cat "${CDIR}/public-key")
  CLOSURE_PATHS=$(sed -n 's/^store paths: *\([0-9]*\).*/\1/p' "${CDIR}/stats.txt")
  SAMPLES="${SAMPLES_ROOT}/$1"
  mkdir -p "${SAMPLES}"
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

# verdict NAME GOT TARGET ge|le: "NAME PASS" when GOT >= (or <=) TARGET.
verdict() {
  awk -v n="$1" -v a="$2" -v t="$3" -v op="$4" 'BEGIN {
    if (a == "" || a == "-" || a == "null") { printf "%s -", n; exit }
    ok = (op == "ge") ? a >= t : a <= t
    printf "%s %s", n, ok ? "PASS" : "FAIL"
  }'
}

tool_row() {
  local tool="$1" comp="$2"
  local cells=("${comp}" "${LABEL[${tool}]}"
    "$(stat_of "${tool}" "${comp}" best time)" "$(stat_of "${tool}" "${comp}" median time)"
    "$(cpu_of "${tool}" "${comp}")" "$(stat_of "${tool}" "${comp}" max rss)")
  if [[ "${tool}" == storepkg ]]; then
    local nm sm pm limit
    nm=$(stat_of nix "${comp}" median time)
    sm=$(stat_of storepkg "${comp}" median time)
    pm=$(stat_of nix_par "${comp}" median time)
    limit=$(cut -d' ' -f1 "${SAMPLES}/limit-${comp}")
    local targets=(
      "$(verdict "nix >= ${TARGET[${comp}]}x" "$(awk -v a="${nm}" -v b="${sm}" 'BEGIN { print a / b }')" "${TARGET[${comp}]}" ge)"
      "$(verdict "-j >= ${PAR_TARGET}x" "$(awk -v a="${pm}" -v b="${sm}" 'BEGIN { if (a != "-") print a / b }')" "${PAR_TARGET}" ge)"
      "$(verdict "CPU <= -j" "$(awk -v a="$(cpu_of storepkg "${comp}")" -v b="$(cpu_of nix_par "${comp}")" 'BEGIN { if (b != "null") print a / b }')" 1 le)"
      "$(verdict "limit <= ${LIMIT_TARGET}x" "$(awk -v a="${sm}" -v b="${limit}" 'BEGIN { print a / b }')" "${LIMIT_TARGET}" le)"
    )
    cells+=("$(ratio "${nm}" "${sm}")" "$(ratio "${pm}" "${sm}")" "$(ratio "${sm}" "${limit}")"
      "$(printf '%s, ' "${targets[@]}" | sed 's/, $//')")
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
  echo "Local file:// caches; ${RUNS} runs each into a fresh store on ${ROOTS_FS}; warm page cache."
  echo "Host: $(nproc) cores, $(awk '/^MemTotal:/ { print int($2 / 1048576) }' /proc/meminfo) GiB; $(nix --version);" \
    "xz $(xz --version | awk 'NR == 1 { print $4 }'); zstd $(zstd --version | grep -o 'v[0-9.]*');" \
    "storepkg ${version:-?} at ${commit}."
  if ((BUSY_RUNS > 0)); then
    echo "Warning: ${BUSY_RUNS} measurements ran on a busy machine."
  fi
  local closure comp tool
  for closure in ${CLOSURES}; do
    use_closure "${closure}"
    echo
    echo "Closure ${closure}: $(sed -n 's/^store paths: *//p' "${CDIR}/stats.txt") store paths," \
      "$(sed -n 's/^NAR bytes: *[0-9]* (\(.*\))/\1/p' "${CDIR}/stats.txt") of NARs."
    echo
    echo "| compression | tool | best s | median s | CPU s (median) | peak RSS MB | nix/storepkg median | nix -j auto/storepkg median | storepkg/limit | targets (medians) |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    for comp in ${COMPRESSIONS}; do
      for tool in nix nix_par storepkg_base storepkg; do
        if [[ -s "${SAMPLES}/${tool}-${comp}" ]]; then
          tool_row "${tool}" "${comp}"
        fi
      done
      echo "| ${comp} | decode limit: \`${DECOMPRESS[${comp}]}\`, one process per core over balanced shares of the NARs | $(cut -d' ' -f1 "${SAMPLES}/limit-${comp}") | | $(cut -d' ' -f2 "${SAMPLES}/limit-${comp}") | | | | | |"
      echo "| ${comp} | \`${DECOMPRESS[${comp}]}\`, largest NAR alone | $(cut -d' ' -f1 "${SAMPLES}/largest-${comp}") | | | | | | | |"
    done
  done
  echo
}

# cpu_of TOOL COMP [user|sys]: median user+sys (or user, or sys) seconds.
cpu_of() {
  local f="${SAMPLES}/$1-$2"
  if [[ ! -s "${f}" ]]; then
    echo null
    return
  fi
  case "${3:-}" in
    user) awk '{ print $3 }' "${f}" | median ;;
    sys) awk '{ print $4 }' "${f}" | median ;;
    *) awk '{ print $3 + $4 }' "${f}" | median ;;
  esac
}

num_or_null() { if [[ "$1" == "-" || -z "$1" ]]; then echo null; else echo "$1"; fi; }

# closure_json: the current closure's medians, one JSON object.
closure_json() {
  local comp tool first=1
  echo "    {"
  echo "      \"name\": \"${CLOSURE}\","
  echo "      \"script\": \"hack/${CLOSURE_SCRIPT[${CLOSURE}]}\","
  echo "      \"closure_paths\": ${CLOSURE_PATHS},"
  echo "      \"nar_bytes\": $(sed -n 's/^NAR bytes: *\([0-9]*\).*/\1/p' "${CDIR}/stats.txt"),"
  echo "      \"files\": \"$(sed -n 's/^file bytes: *//p' "${CDIR}/stats.txt")\","
  echo "      \"compressions\": {"
  for comp in ${COMPRESSIONS}; do
    ((first)) || echo "        ,"
    first=0
    echo "        \"${comp}\": {"
    echo "          \"compressed_bytes\": $(sed -n "s/^cache-${comp}: *\([0-9]*\).*/\1/p" "${CDIR}/stats.txt"),"
    for tool in nix nix_par storepkg; do
      echo "          \"${tool}\": {\"median_s\": $(num_or_null "$(stat_of "${tool}" "${comp}" median time)"), \"best_s\": $(num_or_null "$(stat_of "${tool}" "${comp}" best time)"), \"peak_rss_mb\": $(num_or_null "$(stat_of "${tool}" "${comp}" max rss)"), \"cpu_s\": $(cpu_of "${tool}" "${comp}"), \"user_s\": $(cpu_of "${tool}" "${comp}" user), \"sys_s\": $(cpu_of "${tool}" "${comp}" sys)},"
    done
    local limit largest
    read -ra limit <"${SAMPLES}/limit-${comp}"
    read -ra largest <"${SAMPLES}/largest-${comp}"
    echo "          \"limit_s\": ${limit[0]}, \"limit_cpu_s\": ${limit[1]}, \"limit_procs\": ${limit[2]},"
    echo "          \"largest_nar_s\": ${largest[0]}, \"largest_nar_bytes\": ${largest[1]}"
    echo "        }"
  done
  echo "      }"
  echo "    }"
}

# write_json FILE: the medians, for hack/bench.sh's results table.
write_json() {
  local closure first=1
  {
    echo "{"
    echo "  \"runs\": ${RUNS}, \"roots_fs\": \"${ROOTS_FS}\", \"busy_runs\": ${BUSY_RUNS},"
    echo "  \"nix_version\": \"$(nix --version | awk '{ print $NF }')\","
    echo "  \"closures\": ["
    for closure in ${CLOSURES}; do
      ((first)) || echo "    ,"
      first=0
      use_closure "${closure}"
      closure_json
    done
    echo "  ]"
    echo "}"
  } >"$1"
}

main() {
  ensure_tools
  local closure comp
  for closure in ${CLOSURES}; do
    [[ -n "${CLOSURE_DIR[${closure}]:-}" ]] || die "unknown closure ${closure} in CLOSURES (known: ${!CLOSURE_DIR[*]})"
    log "closure ${closure} and its caches in ${CLOSURE_DIR[${closure}]}"
    "${REPO_ROOT}/hack/${CLOSURE_SCRIPT[${closure}]}" "${CLOSURE_DIR[${closure}]}" >/dev/null
  done

  trap cleanup EXIT
  setup_roots
  SAMPLES_ROOT=$(mktemp -d "${ROOTS_DIR}/samples.XXXX")
  log "fresh stores on ${ROOTS_FS} under ${ROOTS_DIR}"

  for closure in ${CLOSURES}; do
    use_closure "${closure}"
    for comp in ${COMPRESSIONS}; do
      bench_compression "${comp}"
    done
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
