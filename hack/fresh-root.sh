#!/usr/bin/env bash
# Runs a command in a throwaway, clean Debian 12 (bookworm) root, so anyone
# can check the README's promise ("make demo and make test work on a fresh
# Debian 12 machine, as root") without a new machine. Run as root:
#
#   hack/fresh-root.sh make demo
#   hack/fresh-root.sh go test ./...
#   hack/fresh-root.sh bash                           # look around
#   hack/fresh-root.sh env FUZZTIME=1000x make fuzz   # the environment is clean: set
#                                                     # variables like this
#
# The root is what a fresh machine of ours has: debootstrap's default variant
# (Debian's required and important packages) plus gcc, make, git and
# ca-certificates installed with apt-get, and Go from this machine's
# /usr/local/go, bound read-only. It is built once and kept as a tarball
# named by a hash of that recipe (changing the package list rebuilds it):
# $FRESH_ROOT_CACHE/bookworm-<variant>-<hash>.tar.zst.
#
# Each run unpacks a new copy under $FRESH_ROOT_TMPDIR and runs CMD in it,
# from the checkout, as root with a clean environment (HOME, PATH, TERM, CI
# if set). Bound in: this checkout (same path), Go's module and build caches
# (so builds stay quick), /proc, /sys with the cgroups, /dev, /dev/pts; /run,
# /tmp and /dev/shm are new tmpfs. Copied in, as how this machine reaches
# the network: its apt sources and settings, resolver, and the CAs it trusts
# beyond Debian's. Everything happens in private mount, PID and network
# namespaces: the mounts never show on the host, bridges, iptables rules and
# sysctls the command sets stay in the root's network (slirp4netns connects
# it), and when CMD exits every process it left is killed. The script exits
# with CMD's status and removes the root.
#
#   FRESH_ROOT_KEEP=1       keep the root for inspection (its path is printed)
#   FRESH_ROOT_TOOLS=DIR    bind DIR (e.g. /var/cache/storepkg/tools) at the
#                           root's /var/cache/storepkg/tools, so the Go tools
#                           hack/install-deps.sh builds are kept between runs;
#                           default: none, they are built fresh (the honest test)
#   FRESH_ROOT_NET=host     share this machine's network instead (what the
#                           command changes there, it must undo)
#   FRESH_ROOT_REBUILD=1    build the cached tarball again
#   FRESH_ROOT_VARIANT      debootstrap variant (default: default; or minbase)
#   FRESH_ROOT_MIRROR       Debian mirror (default: the one apt uses here)
#   FRESH_ROOT_CACHE        tarball directory (/var/cache/storepkg/fresh-root)
#   FRESH_ROOT_TMPDIR       where roots are unpacked (/var/tmp)
set -o errexit -o nounset -o pipefail

SUITE=bookworm
VARIANT=${FRESH_ROOT_VARIANT:-default}
# What our fresh machines ship besides Debian's default install (and Go).
PACKAGES=(ca-certificates gcc git make)

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
CACHE_DIR=${FRESH_ROOT_CACHE:-/var/cache/storepkg/fresh-root}
TMP_BASE=${FRESH_ROOT_TMPDIR:-/var/tmp}
GO_ROOT=/usr/local/go
# The root's own PATH, as a fresh machine's root login has it after Go's
# install instructions.
ROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$GO_ROOT/bin
NET=${FRESH_ROOT_NET:-private}
RUN_DIR=""
BUILD_DIR=""
TARBALL=""
NETNS_PID=""

LOG_PREFIX=fresh-root
# shellcheck source=hack/lib.sh
. "$REPO/hack/lib.sh"

# in_namespace STAGE ARG...: runs this script's STAGE in new mount (private),
# PID, UTS and IPC namespaces. Mounts made there never reach the host, and
# when the stage ends (even by SIGKILL) the kernel kills whatever it left.
in_namespace() {
  local stage=$1
  shift
  _FRESH_ROOT_STAGE=$stage unshare --mount --propagation private --pid --fork --kill-child --uts --ipc \
    -- "$SELF" "$@"
}

# mount_system ROOT: the kernel file systems a booted machine has, /proc
# mounted already. With NETNS_PID set (private network), sysfs is one of
# that network namespace, so it shows the root's network devices.
mount_system() {
  local root=$1
  if [[ -n $NETNS_PID ]]; then
    nsenter --net="$root/proc/$NETNS_PID/ns/net" mount -t sysfs sysfs "$root/sys"
    mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
  else
    mount --rbind /sys "$root/sys" # with the cgroup hierarchies under it
  fi
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
  mount -t tmpfs -o nosuid,nodev,mode=755 run "$root/run"
  mkdir -m 1777 "$root/run/lock"
  mount -t tmpfs -o nosuid,nodev,mode=1777 tmp "$root/tmp"
}

# private_network ROOT: a network namespace for the root, held by a process
# (NETNS_PID, a PID of ours, whose /proc is ROOT/proc for now), reaching the
# network through slirp4netns the way a VM reaches it through its host:
# 10.0.2.100 on tap0, gateway 10.0.2.2, DNS 10.0.2.3 (forwarded to this
# machine's resolver; slirp4netns keeps a mount namespace of its own, so it
# goes on reading this machine's /etc/resolv.conf). Both die with the PID
# namespace.
private_network() {
  local root=$1 ns log
  log=$(dirname "$root")/slirp4netns.log
  unshare --net sleep infinity &
  NETNS_PID=$!
  ns=$root/proc/$NETNS_PID/ns/net
  for _ in $(seq 100); do
    [[ $(readlink "$ns") != "$(readlink "$root/proc/self/ns/net")" ]] && break
    sleep 0.05
  done
  nsenter --net="$ns" ip link set lo up
  unshare --mount --propagation private \
    slirp4netns --configure --mtu=65520 --disable-host-loopback --netns-type=path "$ns" tap0 >"$log" 2>&1 &
  local i
  for i in $(seq 100); do
    [[ -n $(nsenter --net="$ns" ip -4 route show default) ]] && break
    ((i < 100)) || die "slirp4netns did not bring up the root's network: $(cat "$log")"
    sleep 0.1
  done
  echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf"
}

# bind SRC ROOT [ro]: bind-mounts SRC at the same path inside ROOT.
bind() {
  local src=$1 root=$2 opts=${3:-}
  mkdir -p "$root$src"
  mount --bind ${opts:+-o "$opts"} "$src" "$root$src"
}

# copy_apt_config ROOT: this machine's apt sources, the keyrings they name
# and its Acquire settings (proxy, Check-Valid-Until), so apt-get works in
# the root the way it does here; and /etc/resolv.conf.
copy_apt_config() {
  local root=$1 f key
  rm -f "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/*
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    cp "$f" "$root$f"
    sed -n 's/.*\(Signed-By:\|signed-by=\)[[:space:]]*\(\/[^] ]*\).*/\2/p' "$f" | while read -r key; do
      if [[ -f $key && ! -e $root$key ]]; then install -D -m 644 "$key" "$root$key"; fi
    done
  done
  for f in /etc/apt/apt.conf.d/*; do
    if grep -qsE '^[[:space:]]*Acquire::.*(Proxy|Check-Valid-Until|Check-Date)' "$f"; then
      cp "$f" "$root/etc/apt/apt.conf.d/99fresh-root-host-${f##*/}"
    fi
  done
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

# copy_host_cas ROOT: the certificates this machine trusts beyond Debian's
# ca-certificates (here, the egress proxy's CA), so HTTPS works in the root
# as it does here. Like resolv.conf, it is how this machine reaches the
# network: on an open network there are none. They go where an admin adds
# a CA, so a later update-ca-certificates keeps them.
copy_host_cas() {
  local root=$1 bundle=/etc/ssl/certs/ca-certificates.crt
  [[ -f $bundle && -f $root$bundle ]] || return 0
  local debian_certs=()
  mapfile -t debian_certs < <(find /usr/share/ca-certificates -name '*.crt' 2>/dev/null)
  mkdir -p "$root/usr/local/share/ca-certificates"
  awk -v bundle="$bundle" -v out="$root/usr/local/share/ca-certificates/fresh-root-host" '
    /-----BEGIN CERTIFICATE-----/ { pem = "" }
    { pem = pem $0 "\n" }
    /-----END CERTIFICATE-----/ {
      if (FILENAME != bundle) debian[pem] = 1
      else if (!(pem in debian)) { n++; printf "%s", pem > (out "-" n ".crt") }
    }' "${debian_certs[@]}" "$bundle"
  local f
  for f in "$root"/usr/local/share/ca-certificates/fresh-root-host-*.crt; do
    if [[ -f $f ]]; then cat "$f" >>"$root$bundle"; fi
  done
}

# apt_mirror: the Debian mirror apt uses on this machine for $SUITE.
apt_mirror() {
  if [[ -n ${FRESH_ROOT_MIRROR:-} ]]; then
    echo "$FRESH_ROOT_MIRROR"
    return
  fi
  local f uri=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    # deb [options] URI SUITE COMPONENTS...
    uri=$(awk -v suite="$SUITE" '$1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i + 1) == suite) { print $i; exit } }' "$f")
    if [[ -n $uri ]]; then break; fi
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -z $uri && -f $f ]] || continue
    # deb822 stanzas: Types: deb, Suites: ... SUITE ..., URIs: URI ...
    uri=$(awk -v RS= -v suite="$SUITE" '{
      types = uris = suites = ""; enabled = 1
      n = split($0, lines, "\n")
      for (j = 1; j <= n; j++) {
        split(lines[j], kv, ":[[:space:]]*")
        v = substr(lines[j], length(kv[1]) + 2); sub(/^[[:space:]]*/, "", v)
        if (kv[1] == "Types") types = " " v " "
        if (kv[1] == "URIs") uris = v
        if (kv[1] == "Suites") suites = " " v " "
        if (kv[1] == "Enabled" && v == "no") enabled = 0
      }
      if (enabled && types ~ / deb / && suites ~ (" " suite " ")) { split(uris, u, " "); print u[1]; exit } }' "$f")
  done
  [[ -n $uri ]] || die "no apt source for $SUITE in /etc/apt: set FRESH_ROOT_MIRROR"
  echo "$uri"
}

# stage_build ROOT MIRROR (in its own namespace): debootstrap, then the
# packages of a fresh machine of ours, the way its admin installed them
# (apt-get, with recommends). The tarball's name hashes this function.
stage_build() {
  local root=$1 mirror=$2
  local variant=()
  [[ $VARIANT == default ]] || variant=(--variant="$VARIANT")
  debootstrap "${variant[@]}" "$SUITE" "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
    tail -n 30 "$root.debootstrap.log" >&2
    die "debootstrap failed"
  }
  copy_apt_config "$root"
  mount -t proc proc "$root/proc"
  mount_system "$root"
  chroot "$root" /usr/bin/env -i PATH="$ROOT_PATH" DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -qq && apt-get install -y -qq ${PACKAGES[*]} >/dev/null && apt-get clean"
  # Leave no host-specific apt state: each run copies it in again.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/* \
    "$root"/etc/apt/apt.conf.d/99fresh-root-host-* "$root"/etc/resolv.conf
}

# remove_tree DIR: rm -rf DIR, unless something is mounted under it here
# (the checkout or Go's caches could be deleted through a bind mount).
remove_tree() {
  local dir=$1
  if awk -v d="$dir/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    log "error: not removing $dir: something is mounted under it (see /proc/self/mountinfo)"
    return 1
  fi
  rm -rf "$dir"
}

# ensure_tarball: sets TARBALL to the cached root tarball, building it first
# if need be (into a temporary file, renamed when complete).
ensure_tarball() {
  local key
  key=$({
    printf '%s\n' "$SUITE" "$VARIANT" "${PACKAGES[@]}"
    declare -f stage_build
  } | sha256sum | cut -c1-12)
  TARBALL=$CACHE_DIR/$SUITE-$VARIANT-$key.tar.zst
  mkdir -p "$CACHE_DIR"
  exec 8>"$CACHE_DIR/.lock"
  flock 8 # one build at a time; the others wait for it and use it
  [[ ${FRESH_ROOT_REBUILD:-} == 1 ]] && rm -f "$TARBALL"
  if [[ ! -f $TARBALL ]]; then
    install_apt debootstrap
    local mirror start=$SECONDS
    mirror=$(apt_mirror)
    log "building the $SUITE root ($VARIANT + ${PACKAGES[*]}) from $mirror: a few minutes, once"
    BUILD_DIR=$(mktemp -d "$CACHE_DIR/.build.XXXXXX")
    in_namespace build "$BUILD_DIR/root" "$mirror"
    tar --create --file "$BUILD_DIR/root.tar.zst" --use-compress-program 'zstd -T0 -q' \
      --xattrs --xattrs-include='*' --numeric-owner -C "$BUILD_DIR/root" .
    mv "$BUILD_DIR/root.tar.zst" "$TARBALL"
    find "$CACHE_DIR" -maxdepth 1 -name "$SUITE-*.tar.zst" ! -path "$TARBALL" -delete # older recipes
    remove_tree "$BUILD_DIR"
    BUILD_DIR=""
    log "built $TARBALL ($(du -h "$TARBALL" | cut -f1)) in $((SECONDS - start))s"
  fi
  exec 8>&-
}

# stage_run ROOT CMD... (PID 1 of its own namespaces): mounts, then the root
# becomes the namespace's / (pivot_root, so no host mount is visible and
# tools that pivot_root themselves, like Nix's sandbox, can), then CMD.
stage_run() {
  local root=$1
  shift
  mount --bind "$root" "$root" # pivot_root wants a mount point
  mount -t proc proc "$root/proc"
  [[ $NET == host ]] || private_network "$root"
  mount_system "$root"
  bind "$GO_ROOT" "$root" ro
  bind "$REPO" "$root"
  # A git worktree's repository lives elsewhere; go build reads it to stamp
  # binaries with the commit.
  local git_dir
  git_dir=$(git -C "$REPO" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) || git_dir=""
  [[ -n $git_dir && $git_dir != "$REPO"/* ]] && bind "$git_dir" "$root" ro
  # The host's Go caches at the root's default places (HOME=/root).
  local modcache gocache
  read -r modcache gocache < <("$GO_ROOT/bin/go" env GOMODCACHE GOCACHE | paste -s -d ' ')
  mkdir -p "$modcache" "$root/root/go/pkg/mod"
  mount --bind "$modcache" "$root/root/go/pkg/mod"
  if [[ $gocache != off ]]; then
    mkdir -p "$gocache" "$root/root/.cache/go-build"
    mount --bind "$gocache" "$root/root/.cache/go-build"
  fi
  if [[ -n ${FRESH_ROOT_TOOLS:-} ]]; then
    mkdir -p "$FRESH_ROOT_TOOLS" "$root/var/cache/storepkg/tools"
    mount --bind "$FRESH_ROOT_TOOLS" "$root/var/cache/storepkg/tools"
  fi

  local old=.fresh-root-host
  mkdir -p "$root/$old"
  cd "$root"
  pivot_root . "$old"
  cd /
  umount -l "/$old"
  rmdir "/$old"

  local env=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash PATH="$ROOT_PATH")
  [[ -n ${TERM:-} ]] && env+=(TERM="$TERM")
  [[ -n ${CI+set} ]] && env+=(CI="$CI")
  cd "$REPO"
  local rc=0
  local netns=()
  [[ -z $NETNS_PID ]] || netns=(nsenter --net="/proc/$NETNS_PID/ns/net" --)
  "${netns[@]}" env -i "${env[@]}" "$@" 9>&- || rc=$?
  exit "$rc"
}

cleanup() {
  local rc=$?
  set +o errexit
  if [[ -n $BUILD_DIR ]]; then
    remove_tree "$BUILD_DIR"
  fi
  if [[ -n $RUN_DIR ]]; then
    if [[ ${FRESH_ROOT_KEEP:-} == 1 ]]; then
      touch "$RUN_DIR/kept"
      log "kept the root: $RUN_DIR/root (nothing is mounted there; rm -rf $RUN_DIR when done)"
    else
      remove_tree "$RUN_DIR"
    fi
  fi
  exit "$rc"
}

# sweep: removes the roots of runs that were killed before they could clean
# up (a run holds a lock on its directory for as long as any process of it lives).
sweep() {
  local dir
  for dir in "$TMP_BASE"/fresh-root.*; do
    # (a run takes its lock right after creating it: give it a minute)
    [[ -f $dir/lock && ! -e $dir/kept && -n $(find "$dir/lock" -mmin +1) ]] || continue
    flock -n "$dir/lock" true || continue
    log "removing $dir, left by a killed run"
    remove_tree "$dir" || true
  done
}

main() {
  (($# > 0)) || die "usage: hack/fresh-root.sh CMD... (see the comment at the top of $SELF)"
  [[ $(id -u) == 0 ]] || die "run as root"
  [[ -x $GO_ROOT/bin/go ]] || die "no Go at $GO_ROOT: a fresh machine of ours has it there"
  case $NET in
  host) ;;
  private) install_apt slirp4netns ;;
  *) die "FRESH_ROOT_NET=$NET: private or host" ;;
  esac
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  sweep
  local start=$SECONDS
  ensure_tarball
  mkdir -p "$TMP_BASE"
  RUN_DIR=$(mktemp -d "$TMP_BASE/fresh-root.XXXXXX")
  exec 9>"$RUN_DIR/lock"
  flock 9
  mkdir "$RUN_DIR/root"
  tar --extract --file "$TARBALL" --use-compress-program zstd \
    --xattrs --xattrs-include='*' --numeric-owner -C "$RUN_DIR/root"
  copy_apt_config "$RUN_DIR/root"
  copy_host_cas "$RUN_DIR/root"
  log "root $RUN_DIR/root ready in $((SECONDS - start))s; running: $*"
  start=$SECONDS
  local rc=0
  in_namespace run "$RUN_DIR/root" "$@" || rc=$?
  log "exit status $rc after $((SECONDS - start))s"
  exit "$rc"
}

case ${_FRESH_ROOT_STAGE:-} in
build) stage_build "$@" ;;
run) stage_run "$@" ;;
*) main "$@" ;;
esac
