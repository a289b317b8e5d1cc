#!/usr/bin/env bash
# Builds the kind node image offline and prints its name:
#
#   storepkg.dev/kind-node:<kubernetes version>-<hash of the inputs>
#
# `kind build node-image` cannot be used here (it pulls a base image and
# runs a build inside it). This script does what it and kind's base image
# Dockerfile do, from local inputs only:
#
#   1. a Debian root filesystem from debootstrap (the packages of kind's base
#      image), cached under $KIND_CACHE;
#   2. kind's own node files (entrypoint, systemd units, containerd config)
#      from kind's module, containerd/ctr/shim and crictl from the tools
#      directory, runc and the CNI plugins from Debian, kubeadm/kubelet/kubectl;
#   3. the images kubeadm needs, plus kindnet-lite (our CNI daemon, see
#      kindnet-lite/), written by mkimage and imported into the node's
#      containerd image store before the node ever runs;
#   4. one `docker import` of the result, with kind's entrypoint, and
#      STOPSIGNAL added by a one-line Dockerfile (dockerd 20.10 refuses it
#      in `import --change`).
#
# The tag is a hash of everything that goes in (versions, Debian packages,
# these scripts and node files, our Go programs as built), so a second run
# with nothing changed finds the image in the script-started dockerd and
# returns at once. Older node images are removed when a new one is built.
set -o errexit -o nounset -o pipefail

LOG_PREFIX="kind-node-image"
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# kind's base image packages (images/base/Dockerfile), without the storage
# clients (nfs-common, open-iscsi) and fuse-overlayfs (for rootless only),
# plus Debian's runc and CNI plugins, which the base image builds itself.
ROOTFS_PACKAGES=(
  systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod
  libseccomp2 pigz bash ca-certificates curl jq procps
  runc containernetworking-plugins
)
# The CNI plugins the node needs: kindnet-lite's config uses ptp, host-local
# and portmap; containerd sets up every pod's loopback with loopback.
CNI_PLUGINS=(host-local loopback ptp portmap)

WORK=
BUILD_CONTAINERD_PID=

cleanup() {
  local rc=$?
  if [[ -n $BUILD_CONTAINERD_PID ]]; then
    kill "$BUILD_CONTAINERD_PID" 2>/dev/null || true
    wait "$BUILD_CONTAINERD_PID" 2>/dev/null || true
  fi
  [[ -n $WORK ]] && rm -rf "$WORK"
  ((rc == 0)) || log "failed"
}

# build_go_programs builds kindnet-lite (hack/kind/kindnet-lite) and mkimage
# (integration/cmd/mkimage, in the integration module) into $WORK/bin.
# Reproducible (-trimpath, no VCS stamp), so their hashes can go into the
# image tag.
build_go_programs() {
  mkdir -p "$WORK/bin"
  run_logged "$WORK/go-build.log" env -C "$REPO_ROOT" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags=-s -o "$WORK/bin/" ./hack/kind/kindnet-lite
  run_logged "$WORK/go-build.log" env -C "$REPO_ROOT/integration" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags=-s -o "$WORK/bin/" ./cmd/mkimage
}

# kindnet_image is the image the kindnet-lite manifest names.
kindnet_image() {
  sed -n 's/^ *image: *//p' "$KIND_DIR/kindnet-lite/manifest.yaml"
}

# image_tag prints the node image name for the current inputs.
image_tag() {
  local sum
  sum=$(
    {
      echo "kind $KIND_VERSION kubernetes $K8S_VERSION containerd $CONTAINERD_VERSION crictl $CRICTL_VERSION"
      echo "etcd $ETCD_VERSION coredns $COREDNS_VERSION debian $DEBIAN_SUITE ${ROOTFS_PACKAGES[*]}"
      cd "$REPO_ROOT"
      sha256sum hack/kind/node-image.sh hack/kind/kindnet-lite/manifest.yaml
      find hack/kind/node -type f | LC_ALL=C sort | xargs sha256sum
      cd "$WORK/bin"
      sha256sum kindnet-lite mkimage
    } | sha256sum
  )
  echo "$NODE_IMAGE_REPO:$K8S_VERSION-${sum:0:12}"
}

# rootfs prints the path of the cached debootstrap root filesystem for
# ROOTFS_PACKAGES, making it first if needed.
rootfs() {
  local key dir
  key=$(echo "$DEBIAN_SUITE ${ROOTFS_PACKAGES[*]}" | sha256sum)
  dir=$KIND_CACHE/rootfs-$DEBIAN_SUITE-${key:0:12}
  if [[ ! -d $dir ]]; then
    command -v debootstrap >/dev/null || die "debootstrap not found (run hack/kind/deps.sh)"
    log "debootstrap $DEBIAN_SUITE (minbase + ${#ROOTFS_PACKAGES[@]} packages) from $DEBIAN_MIRROR"
    local start=$SECONDS tmp
    tmp=$(mktemp -d "$KIND_CACHE/.rootfs.XXXXXX")
    local pkgs
    pkgs=$(
      IFS=,
      echo "${ROOTFS_PACKAGES[*]}"
    )
    if ! run_logged "$tmp.log" debootstrap --variant=minbase --include="$pkgs" \
      "$DEBIAN_SUITE" "$tmp/rootfs" "$DEBIAN_MIRROR"; then
      rm -rf "$tmp" "$tmp.log"
      die "debootstrap failed"
    fi
    mv "$tmp/rootfs" "$dir"
    rm -rf "$tmp" "$tmp.log"
    log "debootstrap done in $((SECONDS - start))s"
  fi
  echo "$dir"
}

# kind_module prints the directory of kind's module source (its node files
# live in images/base/files).
kind_module() {
  local dir
  dir=$(env -C / GOWORK=off go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
    sed -n 's/^\t"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [[ -d $dir/images/base/files ]] || die "kind $KIND_VERSION module has no images/base/files"
  echo "$dir"
}

# assemble_rootfs R: turns the copy R of the Debian root filesystem into a
# kind node, as kind's base image Dockerfile and `kind build node-image` do.
assemble_rootfs() {
  local r=$1 kind f
  kind=$(kind_module)
  f=$kind/images/base/files

  # kind's files, with the Dockerfile's modes. Its entrypoint becomes
  # kind-entrypoint, run by ours (node/entrypoint).
  install -d -m 0755 "$r/usr/local/bin" "$r/usr/local/sbin" "$r/kind/bin" "$r/kind/manifests" \
    "$r/LICENSES" "$r/etc/containerd" "$r/etc/default" "$r/etc/sysctl.d" \
    "$r/etc/systemd/system/kubelet.service.d" "$r/etc/systemd/system/containerd.service.d" \
    "$r/etc/kubernetes/manifests" "$r/opt/cni/bin"
  install -m 0755 "$f/usr/local/bin/clean-install" "$r/usr/local/bin/"
  install -m 0755 "$f/usr/local/bin/entrypoint" "$r/usr/local/bin/kind-entrypoint"
  install -m 0644 "$f/kind/README.txt" "$r/kind/"
  install -m 0755 "$f"/kind/bin/* "$r/kind/bin/"
  install -m 0644 "$f"/LICENSES/* "$r/LICENSES/"
  install -m 0644 "$f/etc/crictl.yaml" "$r/etc/"
  install -m 0644 "$f"/etc/containerd/* "$r/etc/containerd/"
  install -m 0644 "$f"/etc/default/* "$r/etc/default/"
  install -m 0644 "$f"/etc/sysctl.d/* "$r/etc/sysctl.d/"
  install -m 0644 "$f"/etc/systemd/system/*.service "$f"/etc/systemd/system/*.slice "$r/etc/systemd/system/"
  install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"

  # Our node files (see each): the entrypoint, the `containerd config dump`
  # wrapper (first on PATH), containerd's OOM score drop-in.
  local n=$KIND_DIR/node
  install -m 0755 "$n/entrypoint" "$r/usr/local/bin/entrypoint"
  install -m 0755 "$n/containerd-config-dump" "$r/usr/local/sbin/containerd"
  install -m 0644 "$n/containerd-oom.conf" "$r/etc/systemd/system/containerd.service.d/10-storepkg-oom.conf"

  # containerd's config stays kind's own root file (version 2, no imports),
  # so an installer can add a drop-in the way it would on any kind node.
  # Two settings change:
  #  - kubeadm v1.34 wants pause:3.10.1 as the sandbox image (kind's file
  #    names 3.10), and that is the pause image we import;
  #  - restrict_oom_score_adj: never give a container a lower OOM score than
  #    containerd's own, since lowering needs CAP_SYS_RESOURCE (kind turns
  #    it on itself for rootless nodes).
  local cfg=$r/etc/containerd/config.toml
  sed -i -e 's#sandbox_image = "registry.k8s.io/pause:3.10"#sandbox_image = "registry.k8s.io/pause:3.10.1"#' \
    -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' "$cfg"
  grep -q 'sandbox_image = "registry.k8s.io/pause:3.10.1"' "$cfg" || die "$cfg: no sandbox_image to set"
  grep -q 'restrict_oom_score_adj = true' "$cfg" || die "$cfg: no restrict_oom_score_adj to set"

  # Binaries: containerd and crictl from the tools directory, runc and the
  # CNI plugins from the Debian root filesystem, Kubernetes from the tools
  # directory.
  install -m 0755 "$CONTAINERD_BIN/containerd" "$CONTAINERD_BIN/containerd-shim-runc-v2" \
    "$CONTAINERD_BIN/ctr" "$CRICTL_BIN/crictl" "$r/usr/local/bin/"
  ln -sf /usr/sbin/runc "$r/usr/local/sbin/runc"
  local p
  for p in "${CNI_PLUGINS[@]}"; do install -m 0755 "$r/usr/lib/cni/$p" "$r/opt/cni/bin/"; done
  install -m 0755 "$K8S_BIN/kubeadm" "$K8S_BIN/kubelet" "$K8S_BIN/kubectl" "$r/usr/bin/"

  # The default OCI spec with kind's hook, as its base image makes it.
  "$CONTAINERD_BIN/ctr" oci spec |
    chroot "$r" jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"} | del(.process.rlimits)' \
      >"$r/etc/containerd/cri-base.json"

  # The base Dockerfile's RUN steps: systemd as init with only what a node
  # needs enabled, and a clean image.
  # shellcheck disable=SC2016 # expanded in the chroot
  chroot "$r" /bin/bash -o errexit -o nounset -c '
    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
    echo "ReadKMsg=no" >>/etc/systemd/journald.conf
    ln -sf "$(command -v systemd)" /sbin/init
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service 2>/dev/null
    systemctl mask systemd-binfmt.service 2>/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/* /tmp/* /var/tmp/* \
      /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
    : >/etc/machine-id
    rm -f /var/lib/dbus/machine-id
    echo kind >/etc/hostname
  '

  # What `kind build node-image` adds: the Kubernetes version kind reads,
  # and the default CNI manifest kind applies (ours: kindnet-lite).
  echo "$K8S_VERSION" >"$r/kind/version"
  install -m 0644 "$KIND_DIR/kindnet-lite/manifest.yaml" "$r/kind/manifests/default-cni.yaml"
}

# import_images R: writes the images kubeadm and kindnet-lite need and
# imports them into R's containerd image store (in the k8s.io namespace
# CRI uses), with the same containerd the node runs, started here against
# R's /var/lib/containerd. Not unpacked, as kind does it: containerd unpacks
# an image when a container first needs it.
import_images() {
  local r=$1 refs
  refs=$("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null) ||
    die "kubeadm config images list failed"
  # The tags must name the binaries we have (lib.sh's versions).
  grep -qx "registry.k8s.io/etcd:${ETCD_VERSION#v}-[0-9]*" <<<"$refs" ||
    die "kubeadm $K8S_VERSION wants another etcd than $ETCD_VERSION: $(grep etcd <<<"$refs")"
  grep -qx "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" <<<"$refs" ||
    die "kubeadm $K8S_VERSION wants another CoreDNS than $COREDNS_VERSION: $(grep coredns <<<"$refs")"
  mkdir -p "$WORK/images"
  # shellcheck disable=SC2086 # $refs: one image reference per word
  run_logged "$WORK/mkimage.log" "$WORK/bin/mkimage" -out "$WORK/images" \
    -k8s "$K8S_BIN" -etcd "$ETCD_BIN/etcd" -coredns "$COREDNS_BIN/coredns" \
    -kindnet "$WORK/bin/kindnet-lite" -rootfs "$r" $refs "$(kindnet_image)"

  local state=$WORK/containerd
  mkdir -p "$state"
  cat >"$state/config.toml" <<EOF
version = 3
root = "$r/var/lib/containerd"
state = "$state/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$state/containerd.sock"
[ttrpc]
  address = "$state/containerd.sock.ttrpc"
EOF
  "$CONTAINERD_BIN/containerd" --config "$state/config.toml" >"$state/log" 2>&1 &
  BUILD_CONTAINERD_PID=$!
  local ctr=("$CONTAINERD_BIN/ctr" --address "$state/containerd.sock" --namespace k8s.io) i
  for ((i = 0; i < 100; i++)); do
    "${ctr[@]}" version >/dev/null 2>&1 && break
    kill -0 "$BUILD_CONTAINERD_PID" 2>/dev/null || break
    sleep 0.1
  done
  "${ctr[@]}" version >/dev/null 2>&1 || {
    tail -n 20 "$state/log" >&2
    die "containerd for the image import did not start"
  }
  local t
  for t in "$WORK"/images/*.tar; do
    run_logged "$WORK/import.log" "${ctr[@]}" images import --all-platforms --no-unpack "$t"
  done
  kill "$BUILD_CONTAINERD_PID"
  wait "$BUILD_CONTAINERD_PID" 2>/dev/null || true
  BUILD_CONTAINERD_PID=
}

# docker_import R TAG: one layer from R, kind's entrypoint and init, then
# STOPSIGNAL (systemd halts on SIGRTMIN+3) through a one-line Dockerfile with
# the legacy builder, which uses the local image and needs no registry.
docker_import() {
  local r=$1 tag=$2
  local tmp_tag=$tag-import
  tar -C "$r" --numeric-owner -cf - . |
    run_logged "$WORK/import-docker.log" docker import \
      --change 'ENV container=docker' \
      --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
      - "$tmp_tag"
  printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$tmp_tag" |
    DOCKER_BUILDKIT=0 run_logged "$WORK/build-docker.log" docker build -t "$tag" -
  docker rmi "$tmp_tag" >/dev/null
}

# remove_old_images removes node images other than TAG that no container
# uses (docker refuses to remove those).
remove_old_images() {
  local keep=$1 img
  for img in $(docker images "$NODE_IMAGE_REPO" --format '{{.Repository}}:{{.Tag}}'); do
    [[ $img == "$keep" ]] && continue
    docker rmi "$img" >/dev/null 2>&1 && log "removed old node image $img"
  done
  return 0
}

main() {
  is_root || die "building the node image needs root (debootstrap, chroot)"
  mkdir -p "$KIND_CACHE"
  # One build at a time: a second caller waits, then finds the image.
  exec 9>"$KIND_CACHE/node-image.lock"
  flock 9

  "$KIND_DIR/deps.sh" >/dev/null
  "$KIND_DIR/docker.sh" start

  WORK=$(mktemp -d "$KIND_CACHE/.build.XXXXXX")
  trap cleanup EXIT
  build_go_programs
  local tag
  tag=$(image_tag)
  if docker image inspect "$tag" >/dev/null 2>&1; then
    log "node image $tag is up to date"
    echo "$tag"
    return 0
  fi

  log "building node image $tag"
  local start=$SECONDS base
  base=$(rootfs)
  local r=$WORK/rootfs
  cp -a "$base" "$r"
  assemble_rootfs "$r"
  import_images "$r"
  docker_import "$r" "$tag"
  remove_old_images "$tag"
  log "built node image $tag in $((SECONDS - start))s"
  echo "$tag"
}

main "$@"
