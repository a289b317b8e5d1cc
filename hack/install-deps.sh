#!/usr/bin/env bash
# Installs what the demo or the tests need on a fresh Debian 12 machine, as
# root: Debian packages, then Go tools built from the module proxy (cached by
# version under $STOREPKG_TOOLS). Safe to run again: it only installs what is
# missing.
#
#   hack/install-deps.sh [test]   everything the tests and benchmarks need
#   hack/install-deps.sh demo     only what `make demo` needs
#
# Go tools land in ${STOREPKG_TOOLS:-/var/cache/storepkg/tools}/<name>-<version>/
# and ${STOREPKG_TOOLS}/env.sh exports a PATH with all of them, for scripts:
#
#   . "$(hack/install-deps.sh)/env.sh"    # the script prints the tools dir
#
# integration/critest and internal/toolcache find the tools the same way
# (same variable, same layout): keep the versions below in step with
# integration/critest/tools.go and internal/toolcache (whose test checks
# CONTAINERD_MATRIX), and SEAWEEDFS_VERSION with internal/s3test.
set -o errexit -o nounset -o pipefail

# make demo: Nix builds and serves a closure; a private containerd with CRI
# runs the pod (runc, CNI plugins and the tools the bridge plugin calls).
DEMO_APT_PACKAGES=(
  nix-bin busybox-static
  runc containernetworking-plugins iproute2 iptables
)
# The tests and benchmarks, besides: decoders the fetch tests compare with,
# GNU time for the benchmarks, a C compiler for the programs the shim tests
# link against store paths, the sqlite3 shell and flock(1) that the store
# tests contend with as Nix does, losetup(8) and mkfs.ext4(8) for the power
# cut tests (internal/powercut), jq for the kind e2e's peers files and
# cache counts, qemu-aarch64-static to run the arm64 build's tests on
# amd64 (make test-arm64; called explicitly, as `go test -exec`, so no
# binfmt_misc registration, which a container cannot make).
TEST_APT_PACKAGES=(
  "${DEMO_APT_PACKAGES[@]}"
  xz-utils zstd time gcc libc6-dev sqlite3 util-linux mount e2fsprogs jq
  qemu-user-static
)

TOOLS_DIR="${STOREPKG_TOOLS:-/var/cache/storepkg/tools}"
CONTAINERD_VERSION=v2.3.4
CRICTL_VERSION=v1.34.0
# The containerd matrix: the newest patch of every minor from 1.7 on that
# the module proxy serves (`go list -m -versions`). The CRI matrix test
# (integration/containerd_matrix_test.go) runs a pod on each, and
# pkg/nodeinstall checks its config edits with each one's `config dump`.
# Only their daemons are built: ctr, crictl and the runc shim are the
# ones above.
CONTAINERD_MATRIX=(v1.7.35 v2.0.14 v2.1.9 v2.2.10 v2.3.7 v2.4.2)
# The S3 cache tests (internal/s3test) serve buckets with SeaweedFS's `weed`.
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6

# "name version package...": the tool directory name-version holds the
# binaries of those packages, each built by `go install package@version`.
GO_TOOLS=(
  "containerd ${CONTAINERD_VERSION} github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr"
  "crictl ${CRICTL_VERSION} sigs.k8s.io/cri-tools/cmd/crictl"
)

LOG_PREFIX=install-deps
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# go_tool NAME VERSION PKG...: builds the packages at VERSION into
# $TOOLS_DIR/NAME-VERSION unless every binary is there already. Builds into a
# temporary directory first so an interrupted build never looks complete.
go_tool() {
  local name=$1 version=$2
  shift 2
  local dir="$TOOLS_DIR/$name-$version" pkg missing=()
  for pkg in "$@"; do
    [[ -x "$dir/${pkg##*/}" ]] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0

  command -v go >/dev/null || die "go is not on PATH: cannot build $name"
  log "building $name $version (${missing[*]##*/})"
  mkdir -p "$TOOLS_DIR"
  local tmp
  tmp=$(mktemp -d "$TOOLS_DIR/.$name-$version.XXXXXX")
  local start=$SECONDS
  for pkg in "${missing[@]}"; do
    # Run outside any module so the project's go.mod has no say; static
    # binaries. go's chatter goes to a log, shown only on failure. Niced:
    # weed alone takes minutes of both cores, and a developer's machine
    # runs tests meanwhile.
    if ! (cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" nice -n 10 go install "$pkg@$version") >"$tmp/.log" 2>&1; then
      tail -n 40 "$tmp/.log" >&2
      rm -rf "$tmp"
      die "go install $pkg@$version failed"
    fi
  done
  rm -f "$tmp/.log"
  mkdir -p "$dir"
  mv "$tmp"/* "$dir"/
  rmdir "$tmp"
  log "built $name $version in $((SECONDS - start))s"
}

install_go_tools() {
  local spec
  for spec in "${GO_TOOLS[@]}"; do
    # shellcheck disable=SC2086
    go_tool $spec
  done
}

# module_build NAME VERSION MODULE PKG [TAGS]: builds the binary of package
# PKG (a directory of MODULE) at VERSION into $TOOLS_DIR/NAME-VERSION, for
# modules that `go install pkg@version` refuses (their go.mod has exclude
# or replace directives): in a writable copy of the module from the module
# cache, with the module's own go.mod.
module_build() {
  local name=$1 version=$2 module=$3 pkg=$4 tags=${5:-}
  local dir="$TOOLS_DIR/$name-$version" bin=${pkg##*/}
  [[ -x "$dir/$bin" ]] && return 0
  command -v go >/dev/null || die "go is not on PATH: cannot build $name"
  log "building $name $version ($bin)"
  mkdir -p "$TOOLS_DIR"
  local start=$SECONDS tmp src
  tmp=$(mktemp -d "$TOOLS_DIR/.$name-$version.XXXXXX")
  if ! src=$(cd "$tmp" && go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') || [[ -z "$src" ]]; then
    rm -rf "$tmp"
    die "go mod download $module@$version failed"
  fi
  cp -r "$src" "$tmp/src"
  chmod -R u+w "$tmp/src"
  if ! (cd "$tmp/src" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 go build -tags "$tags" \
    -o "$tmp/$bin" "./$pkg") >"$tmp/.log" 2>&1; then
    tail -n 40 "$tmp/.log" >&2
    rm -rf "$tmp"
    die "building $name $version failed"
  fi
  mkdir -p "$dir"
  mv "$tmp/$bin" "$dir/"
  rm -rf "$tmp"
  log "built $name $version in $((SECONDS - start))s"
}

# containerd_daemon VERSION builds the containerd daemon of VERSION (1.x or
# 2.x) into $TOOLS_DIR/containerd-VERSION unless it is there: `go install
# pkg@version` refuses the modules whose go.mod has exclude directives (1.7,
# 2.0, 2.1), so every version builds the same way, with module_build.
containerd_daemon() {
  local version=$1 module=github.com/containerd/containerd
  [[ $version == v1.* ]] || module+=/v${version:1:1}
  module_build containerd "$version" "$module" cmd/containerd no_btrfs,no_devmapper,no_zfs,no_aufs
}

install_containerd_matrix() {
  local v
  for v in "${CONTAINERD_MATRIX[@]}"; do
    containerd_daemon "$v"
  done
}

# write_env writes $TOOLS_DIR/env.sh: sourcing it puts every tool dir first
# on PATH.
write_env() {
  local spec name version path="" env="$TOOLS_DIR/env.sh"
  for spec in "${GO_TOOLS[@]}"; do
    read -r name version _ <<<"$spec"
    path+="$TOOLS_DIR/$name-$version:"
  done
  path+="$TOOLS_DIR/seaweedfs-$SEAWEEDFS_VERSION:"
  local content
  content=$(
    cat <<EOF
# Generated by hack/install-deps.sh: tools built from the Go module proxy.
export STOREPKG_TOOLS="$TOOLS_DIR"
export PATH="${path}\$PATH"
EOF
  )
  [[ -f "$env" && "$(cat "$env")" == "$content" ]] && return 0
  echo "$content" >"$env.tmp"
  mv "$env.tmp" "$env"
}

main() {
  case "${1:-test}" in
    demo)
      install_apt "${DEMO_APT_PACKAGES[@]}"
      install_go_tools
      ;;
    test)
      install_apt "${TEST_APT_PACKAGES[@]}"
      install_go_tools
      install_containerd_matrix
      # weed: minutes of both cores on a cold build cache.
      module_build seaweedfs "$SEAWEEDFS_VERSION" github.com/seaweedfs/seaweedfs weed
      ;;
    *) die "usage: $0 [test|demo]" ;;
  esac
  write_env
  log "ok: tools in $TOOLS_DIR (source $TOOLS_DIR/env.sh)"
  echo "$TOOLS_DIR"
}

main "$@"
