#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian 12 machine, as
# root: Debian packages, then Go tools built from the module proxy (cached by
# version under $TOOLS_DIR). Safe to run again: it only installs what is
# missing.
set -o errexit -o nounset -o pipefail

APT_PACKAGES=(nix-bin busybox-static xz-utils zstd time)

log() { echo "install-deps: $*" >&2; }

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_apt() {
  local missing
  missing=$(missing_packages "${APT_PACKAGES[@]}")
  [[ -z "$missing" ]] && return 0
  log "apt-get install $(echo $missing)"
  if [[ $(id -u) != 0 ]]; then
    log "not root: install these packages yourself: $missing"
    exit 1
  fi
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

main() {
  install_apt
  log "ok"
}

main "$@"
