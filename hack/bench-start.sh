#!/usr/bin/env bash
# bench-start.sh: warm container create+start through CRI (crictl create
# + start, image or closure already on the node), plain runc against
# storepkg with closures of 10, 100, 1,000 and 3,000 paths, all in one
# containerd started by the benchmark. Prints a table and writes it to
# bench/results/start-latest.md.
#
# Usage: hack/bench-start.sh   (or: make bench-start)
# Environment: COUNT (iterations per row, default 5), RESULTS.
set -o errexit -o nounset -o pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT="${COUNT:-5}"
RESULTS="${RESULTS:-${REPO_ROOT}/bench/results/start-latest.md}"

log() { echo "bench-start: $*" >&2; }

run_benchmark() {
  # shellcheck disable=SC1091
  source "${STOREPKG_TOOLS:-/var/cache/storepkg/tools}/env.sh"
  log "go test -bench BenchmarkStart -benchtime ${COUNT}x ./pkg/shim"
  (cd "$REPO_ROOT" && go test ./pkg/shim -run '^$' -bench '^BenchmarkStart$' -benchtime "${COUNT}x" -count 1) |
    tee /dev/stderr | awk '/^BenchmarkStart\// { sub(/^BenchmarkStart\//, "", $1); sub(/-[0-9]+$/, "", $1); print $1, $3 }'
}

table() {
  awk -v date="$(date -u '+%Y-%m-%d %H:%M UTC')" -v cores="$(nproc)" -v commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD)" \
      -v runc="$(runc --version | head -1)" -v count="$COUNT" '
    { ms[$1] = $2 / 1e6; order[n++] = $1 }
    END {
      printf "## bench-start %s\n\n", date
      printf "Warm create+start through CRI (crictl create + start; each op includes two crictl processes), %d runs per row.\n", count
      printf "Host: %d cores; containerd 2.3.4; %s; storepkg at %s.\n\n", cores, runc, commit
      printf "| row | ms/op | vs runc | vs 10 paths |\n|---|---:|---:|---:|\n"
      for (i = 0; i < n; i++) {
        r = order[i]
        vs10 = (r ~ /^storepkg-paths-/ && ("storepkg-paths-10" in ms)) ? sprintf("%+.0f ms", ms[r] - ms["storepkg-paths-10"]) : ""
        printf "| %s | %.1f | %.2fx | %s |\n", r, ms[r], ms[r] / ms["runc"], vs10
      }
      printf "\nTargets (issue 4): warm start within 10%% (or 5 ms) of runc; 3,000 paths within 50 ms of 10 paths.\n"
    }'
}

main() {
  local rows
  rows=$(run_benchmark)
  mkdir -p "$(dirname "$RESULTS")"
  echo "$rows" | table | tee "$RESULTS"
}

main "$@"
