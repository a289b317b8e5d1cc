#!/usr/bin/env bash
# Installs what a kind cluster built offline needs on a fresh Debian 12
# machine, as root: a few Debian packages, then Go tools built from the
# module proxy and cached by version in
# ${STOREPKG_TOOLS:-/var/cache/storepkg/tools}/<name>-<version>/:
#
#   kind-v0.31.0        kind
#   kubernetes-v1.34.4  kubeadm kubelet kubectl kube-apiserver
#                       kube-controller-manager kube-scheduler kube-proxy
#   etcd-v3.6.5         etcd
#   coredns-v1.12.1     coredns (only the plugins kubeadm's Corefile uses)
#   containerd-v2.3.4   containerd containerd-shim-runc-v2 ctr  } shared with
#   crictl-v1.34.0      crictl                                  } install-deps.sh
#
# Safe to run again: it only builds what is missing, into a temporary
# directory first, so an interrupted build never looks complete. Prints the
# tools directory on stdout. Versions are in lib.sh.
#
# Kubernetes, etcd and CoreDNS cannot be built with `go install pkg@version`
# (their main modules have replace directives, or they are libraries plus a
# main we choose). Each is built in a throwaway wrapper module generated in a
# temporary directory, so the project's own go.mod has no say in it.
set -o errexit -o nounset -o pipefail

LOG_PREFIX="kind-deps"
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(
  # dockerd, started by docker.sh (Debian's containerd and runc come with it)
  docker.io iptables
  # the node image's Debian root filesystem
  debootstrap
  # the smoke test's image (integration/testimages.WriteBusybox)
  busybox-static
)

# install_kind_apt installs APT_PACKAGES with no service started.
install_kind_apt() {
  [[ -z "$(missing_packages "${APT_PACKAGES[@]}")" ]] && return 0
  is_root || die "not root: install these packages yourself: $(missing_packages "${APT_PACKAGES[@]}" | tr '\n' ' ')"
  # docker.io's maintainer scripts would start a system-wide dockerd (with
  # /var/lib/docker) on a machine with an init system. docker.sh starts the
  # only dockerd we want, so deny service starts while installing, the
  # Debian way, unless the machine already has a policy.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# hack/kind/deps.sh: no service starts during apt-get install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  local rc=0
  (install_apt "${APT_PACKAGES[@]}") || rc=$?
  [[ -n $own_policy ]] && rm -f "$policy"
  ((rc == 0)) || exit "$rc"
}

# have_all DIR BIN...: every BIN is an executable in DIR.
have_all() {
  local dir=$1 b
  shift
  for b in "$@"; do
    [[ -x $dir/$b ]] || return 1
  done
}

# tool_tmpdir NAME VERSION: a fresh temporary directory next to the tool
# directories (same filesystem, so the final mv is a rename).
tool_tmpdir() {
  mkdir -p "$TOOLS_DIR"
  mktemp -d "$TOOLS_DIR/.$1-$2.XXXXXX"
}

# finish_tool TMP DIR START NAME VERSION: moves the binaries built in TMP/bin
# into DIR and removes TMP.
finish_tool() {
  local tmp=$1 dir=$2 start=$3 name=$4 version=$5
  mkdir -p "$dir"
  mv "$tmp"/bin/* "$dir"/
  rm -rf "$tmp"
  log "built $name $version in $((SECONDS - start))s"
}

# go_env runs go outside any module and workspace, static, with the local
# toolchain only.
go_env() {
  env GOWORK=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 "$@"
}

# go_install NAME VERSION PKG...: `go install PKG@VERSION` for each package
# into $TOOLS_DIR/NAME-VERSION, unless every binary is there already.
go_install() {
  local name=$1 version=$2
  shift 2
  local dir=$TOOLS_DIR/$name-$version pkg bins=()
  for pkg in "$@"; do bins+=("${pkg##*/}"); done
  have_all "$dir" "${bins[@]}" && return 0
  command -v go >/dev/null || die "go is not on PATH: cannot build $name"
  log "building $name $version (${bins[*]})"
  local start=$SECONDS tmp
  tmp=$(tool_tmpdir "$name" "$version")
  mkdir "$tmp/bin"
  for pkg in "$@"; do
    if ! (cd "$tmp" && go_env GOBIN="$tmp/bin" go install "$pkg@$version") >"$tmp/log" 2>&1; then
      tail -n 40 "$tmp/log" >&2
      rm -rf "$tmp"
      die "go install $pkg@$version failed"
    fi
  done
  finish_tool "$tmp" "$dir" "$start" "$name" "$version"
}

# wrapper_build NAME VERSION SETUP LDFLAGS PKG...: builds PKG... (main
# packages) in a throwaway module: SETUP is called in its empty directory to
# write go.mod and sources, then `go mod tidy` and one `go build` of all
# packages (they share most of their dependencies).
wrapper_build() {
  local name=$1 version=$2 setup=$3 ldflags=$4
  shift 4
  local dir=$TOOLS_DIR/$name-$version pkg bins=()
  for pkg in "$@"; do
    pkg=${pkg%/}
    bins+=("${pkg##*/}")
  done
  have_all "$dir" "${bins[@]}" && return 0
  command -v go >/dev/null || die "go is not on PATH: cannot build $name"
  log "building $name $version (${bins[*]})"
  local start=$SECONDS tmp
  tmp=$(tool_tmpdir "$name" "$version")
  mkdir "$tmp/src" "$tmp/bin"
  if ! (
    cd "$tmp/src"
    "$setup"
    go_env go mod tidy
    go_env go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" "$@"
  ) >"$tmp/log" 2>&1; then
    tail -n 40 "$tmp/log" >&2
    rm -rf "$tmp"
    die "building $name $version failed"
  fi
  finish_tool "$tmp" "$dir" "$start" "$name" "$version"
}

# --- Kubernetes -------------------------------------------------------------

K8S_COMMANDS=(kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)

# k8s_setup writes the Kubernetes wrapper module: k8s.io/kubernetes itself,
# with every staging module (which its own go.mod replaces with
# ./staging/src/...) replaced by its published release, v0.<minor>.<patch>.
k8s_setup() {
  local gomod staging=v0.${K8S_VERSION#v1.} c
  gomod=$(go_env go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^\t"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -f $gomod ]] || {
    echo "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
    return 1
  }
  {
    printf 'module storepkg.dev/wrapper/kubernetes\n\ngo 1.24\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    sed -n 's#^\s*\(k8s\.io/[^ ]*\) => \./staging/src/.*$#\t\1 => \1 '"$staging"'#p' "$gomod"
    printf ')\n'
  } >go.mod
  grep -q 'k8s.io/client-go => ' go.mod || {
    echo "no staging replace directives found in $gomod"
    return 1
  }
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "${K8S_COMMANDS[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } >tools.go
}

# k8s_ldflags stamps the version as Kubernetes' own build does: kubeadm and
# kubelet compare versions, and kind reads them.
k8s_ldflags() {
  local minor=${K8S_VERSION#v1.} flags="-s -w" p
  minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# --- etcd and CoreDNS ----------------------------------------------------------

etcd_setup() {
  cat >go.mod <<EOF
module storepkg.dev/wrapper/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  mkdir etcd
  cat >etcd/main.go <<'EOF'
// Command etcd is etcd's own main, as the etcd release binary runs it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
}

# CoreDNS chains its plugins in the fixed order of its directive list; a
# build needs only to link the plugins a Corefile names. These are the ones
# of kubeadm's default Corefile ("prometheus" lives in plugin/metrics).
COREDNS_PLUGINS=(errors health ready kubernetes metrics forward cache loop reload loadbalance)

coredns_setup() {
  local p
  cat >go.mod <<EOF
module storepkg.dev/wrapper/coredns

go 1.24

require github.com/coredns/coredns $COREDNS_VERSION
EOF
  mkdir coredns
  {
    cat <<'EOF'
// Command coredns is CoreDNS with only the plugins kubeadm's Corefile uses.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

EOF
    for p in "${COREDNS_PLUGINS[@]}"; do printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "$p"; done
    printf ')\n\nfunc main() { coremain.Run() }\n'
  } >coredns/main.go
}

main() {
  install_kind_apt
  go_install kind "$KIND_VERSION" sigs.k8s.io/kind
  go_install containerd "$CONTAINERD_VERSION" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
  go_install crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
  wrapper_build etcd "$ETCD_VERSION" etcd_setup "-s -w" ./etcd
  wrapper_build coredns "$COREDNS_VERSION" coredns_setup "-s -w" ./coredns
  local c pkgs=()
  for c in "${K8S_COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  wrapper_build kubernetes "$K8S_VERSION" k8s_setup "$(k8s_ldflags)" "${pkgs[@]}"
  echo "$TOOLS_DIR"
}

main "$@"
