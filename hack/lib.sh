# shellcheck shell=bash
# Sourced by every hack/ script: logging, failing, retrying, installing
# Debian packages, and the environment Nix runs in. Sourced, never run; set
# LOG_PREFIX first to name the script in its log lines.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "${LOG_PREFIX:-hack}: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# retry N DELAY CMD...: runs CMD up to N times, DELAY seconds apart, until
# it succeeds; fails if it never does.
retry() {
  local n=$1 delay=$2 i
  shift 2
  for ((i = 1; i <= n; i++)); do
    "$@" && return 0
    ((i < n)) && sleep "$delay"
  done
  return 1
}

is_root() { [[ $(id -u) == 0 ]]; }

# missing_packages PKG...: prints the packages dpkg does not have installed.
missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# install_apt PKG...: installs, without recommends, the packages dpkg does
# not have; as root only.
install_apt() {
  local missing
  missing=$(missing_packages "$@")
  [[ -z "$missing" ]] && return 0
  log "apt-get install ${missing//$'\n'/ }"
  is_root || die "not root: install these packages yourself: ${missing//$'\n'/ }"
  apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
    die "apt-get install ${missing//$'\n'/ } failed"
}

# NIX_ENV: `env "${NIX_ENV[@]}" nix-store ...` runs a Nix command with the
# project's configuration, internal/nixtest/nixconf/nix.conf (the one the
# Go tests' internal/nixtest uses): none of the caller's NIX_* variables,
# no host /etc/nix/nix.conf, no user nix.conf, a private cache directory.
# So a machine with Nix set up (build users, a daemon, substituters) and a
# fresh one with none of it run the same Nix.
NIX_ENV=()
for _v in $(compgen -e); do
  [[ $_v == NIX_* ]] && NIX_ENV+=(-u "$_v")
done
unset _v
NIX_ENV+=(
  "NIX_CONF_DIR=$REPO_ROOT/internal/nixtest/nixconf"
  "NIX_USER_CONF_FILES="
  "XDG_CACHE_HOME=${TMPDIR:-/tmp}/storepkg-nix-$(id -u)/cache"
)

# nix_run CMD [ARG...]: runs a Nix command (nix, nix-build, nix-store, ...)
# in NIX_ENV.
nix_run() { env "${NIX_ENV[@]}" "$@"; }
