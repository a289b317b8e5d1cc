# shellcheck shell=bash
# Sourced by the hack/ scripts: logging and the environment Nix runs in.
# Set LOG_PREFIX before sourcing to name the script in its log lines.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "${LOG_PREFIX:-hack}: $*" >&2; }
die() {
  log "error: $*"
  exit 1
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
