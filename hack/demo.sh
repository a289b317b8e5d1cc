#!/usr/bin/env bash
# make demo: shows storepkg substituting a Nix closure from a signed binary
# cache on 127.0.0.1 into a node store, checked by real Nix. Everything is
# built here, offline, and removed at the end.
set -o errexit -o nounset -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/storepkg-demo.XXXXXX)
HTTPD_PID=""
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nbuild-users-group =\nsandbox = false'

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

cleanup() {
  [[ -n "$HTTPD_PID" ]] && kill "$HTTPD_PID" 2>/dev/null || true
  chmod -R u+w "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

build_closure() {
  step "Building a small closure with Nix (offline, from a static busybox)"
  mkdir -p "$WORK/src/bb/bin"
  cp /bin/busybox "$WORK/src/bb/bin/busybox"
  ln -s busybox "$WORK/src/bb/bin/sh"
  ROOT_PATH=$(nix-build --store "local?root=$WORK/build" --option sandbox true --no-out-link \
    --arg busyboxSrc "$WORK/src/bb" "$REPO/hack/demo/closure.nix" 2>/dev/null)
  nix-store --store "local?root=$WORK/build" -qR "$ROOT_PATH"
}

write_cache() {
  step "Writing a signed, zstd-compressed binary cache with nix copy"
  nix key generate-secret --key-name demo-cache-1 > "$WORK/secret-key"
  PUBLIC_KEY=$(nix key convert-secret-to-public < "$WORK/secret-key")
  nix copy --store "local?root=$WORK/build" \
    --to "file://$WORK/cache?compression=zstd&secret-key=$WORK/secret-key" "$ROOT_PATH"
  echo "public key: $PUBLIC_KEY"
}

serve_cache() {
  local port=$((20000 + RANDOM % 20000))
  busybox httpd -f -p "127.0.0.1:$port" -h "$WORK/cache" &
  HTTPD_PID=$!
  CACHE_URL="http://127.0.0.1:$port"
  step "Serving the cache at $CACHE_URL"
}

fetch() {
  step "storepkg fetch: the closure into an empty node store at $WORK/node"
  "$REPO/bin/storepkg" fetch --root "$WORK/node" --substituter "$CACHE_URL" \
    --trusted-public-key "$PUBLIC_KEY" "$ROOT_PATH"
  step "Real Nix checks the node store"
  nix-store --store "local?root=$WORK/node" --verify --check-contents
  nix-store --store "local?root=$WORK/node" -qR "$ROOT_PATH"
  step "storepkg path-info"
  "$REPO/bin/storepkg" path-info --root "$WORK/node" "$ROOT_PATH"
  step "A second fetch finds everything valid (one database query)"
  time "$REPO/bin/storepkg" fetch --root "$WORK/node" --substituter "$CACHE_URL" \
    --trusted-public-key "$PUBLIC_KEY" "$ROOT_PATH"
}

refuse_untrusted() {
  step "A cache signed by a key the node does not trust is refused"
  rm -rf "$WORK/node2"
  if "$REPO/bin/storepkg" fetch --root "$WORK/node2" --substituter "$CACHE_URL" \
    --trusted-public-key "other-1:$(head -c 32 /dev/urandom | base64)" "$ROOT_PATH"; then
    echo "unexpected success" >&2
    exit 1
  fi
}

main() {
  "$REPO/hack/install-deps.sh"
  make -C "$REPO" --no-print-directory build >/dev/null
  build_closure
  write_cache
  serve_cache
  fetch
  refuse_untrusted
  step "Done; cleaning up"
}

main "$@"
