# shellcheck shell=bash
# Sourced, after hack/lib.sh, by the benchmark closure builders
# (hack/mkbench-closure.sh, hack/mkbench-closure-pygo.sh): staging files of
# Debian packages, building the closure into a private chroot store, signing
# and writing its two caches, the stats, and the main that runs it all.
#
# The script sets, before it calls mkbench_main:
#   HOST_LIB     where the host's shared libraries are
#   KEY_NAME     the name of the key that signs the caches
#   MIN_PATHS    the fewest store paths the closure may have
#   MIN_BYTES    the fewest NAR bytes the closure may have
#   XZ_PARALLEL  1: write the xz cache with parallel-compression=true
# and defines:
#   all_packages      prints every Debian package it needs, sorted
#   stage_sources     stages the files of each store path under SRC
#   write_expression  writes OUTDIR/closure.nix, which builds the closure

# The script and this file: script_version hashes both, so a change to
# either rebuilds the closure.
MKBENCH_FILES=("${BASH_SOURCE[1]}" "${BASH_SOURCE[0]}")

# timed LABEL CMD...: runs CMD and logs how long it took.
timed() {
  local label="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  log "${label}: $(awk -v s="${start}" -v e="${end}" 'BEGIN { printf "%.1fs", e - s }')"
}

usage() {
  echo "usage: $0 OUTDIR" >&2
  exit 2
}

# ensure_packages installs, as root with apt-get, the Debian packages that
# are missing: the tools the script runs (Nix among them) and every
# package it stages files of.
ensure_packages() {
  local pkgs
  mapfile -t pkgs < <(all_packages)
  install_apt nix-bin "${pkgs[@]}"
}

script_version() {
  { sha256sum "${MKBENCH_FILES[@]}" | cut -d' ' -f1; echo "xz-parallel=${XZ_PARALLEL}"; } | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------------------
# Staging: copy files of Debian packages into OUTDIR/src/<name>/ (one dir
# per store path).

# pkg_list PKG: the file OUTDIR/dpkg/PKG.list, what dpkg installed for PKG,
# one path a line, /bin, /sbin and /lib as /usr/bin, /usr/sbin and /usr/lib
# (Debian 12's /usr is merged). Prints its name.
pkg_list() {
  local pkg="$1" list="${OUTDIR}/dpkg/$1.list"
  if [[ ! -f "${list}" ]]; then
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed' ||
      die "Debian package ${pkg} is not installed"
    mkdir -p "${OUTDIR}/dpkg"
    dpkg-query -L "${pkg}" | grep '^/' | sed -E 's#^/(bin|sbin|lib|lib64)/#/usr/\1/#' |
      LC_ALL=C sort -u >"${list}.tmp"
    mv "${list}.tmp" "${list}"
  fi
  echo "${list}"
}

# check_owned PKG FILE...: dies unless each FILE is a file of PKG and is here.
check_owned() {
  local pkg="$1"; shift
  local list f
  list=$(pkg_list "${pkg}")
  for f in "$@"; do
    grep -Fxq -- "${f}" "${list}" || die "${f} is not a file of the Debian package ${pkg}"
    [[ -e "${f}" ]] || die "${f} of the Debian package ${pkg} is missing"
  done
}

# stage_file NAME SUBDIR PKG FILE...: copies files of PKG (dereferenced)
# into NAME/SUBDIR.
stage_file() {
  local name="$1" sub="$2" pkg="$3"; shift 3
  check_owned "${pkg}" "$@"
  mkdir -p "${SRC}/${name}/${sub}"
  cp -L "$@" "${SRC}/${name}/${sub}/"
}

# stage_lib NAME PKG FILE...: stage_file NAME lib PKG HOST_LIB/FILE...
stage_lib() {
  local name="$1" pkg="$2"; shift 2
  stage_file "${name}" lib "${pkg}" "${@/#/${HOST_LIB}/}"
}

# stage_tree NAME SUBDIR DIR PKG...: copies the files, symlinks and dirs
# under DIR that the packages installed into NAME/SUBDIR/<basename of DIR>,
# as they are (symlinks kept), except the symlinks SKIP_LINKS (a
# space-separated list of paths, unset for none) names. Anything else
# under DIR is left out.
stage_tree() {
  local name="$1" sub="$2" dir="$3"; shift 3
  local parent="${dir%/*}" pkg lists=() entries=() kept=() e nfiles=0
  for pkg in "$@"; do
    lists+=("$(pkg_list "${pkg}")")
  done
  mapfile -t entries < <(cat "${lists[@]}" | awk -v d="${dir}/" 'index($0, d) == 1' | LC_ALL=C sort -u)
  for e in "${entries[@]}"; do
    [[ -e "${e}" || -L "${e}" ]] || die "${e} of the Debian package(s) $* is missing"
    if [[ -L "${e}" && " ${SKIP_LINKS:-} " == *" ${e} "* ]]; then
      continue
    fi
    [[ -f "${e}" && ! -L "${e}" ]] && nfiles=$((nfiles + 1))
    kept+=("${e}")
  done
  ((nfiles > 0)) || die "the Debian package(s) $* installed no files under ${dir}"
  mkdir -p "${SRC}/${name}/${sub}"
  printf '%s\n' "${kept[@]#"${parent}/"}" |
    tar -C "${parent}" --no-recursion --verbatim-files-from --no-unquote -cf - -T - |
    tar -C "${SRC}/${name}/${sub}" -xf -
}

# A store path name may only hold these characters.
valid_name() { [[ "$1" =~ ^[A-Za-z0-9+._?=-]+$ && "$1" != .* ]]; }

# stage_base: a fresh SRC, busybox-static in OUTDIR/bb (the builder of
# every derivation), and the paths every closure has: glibc and gcc-12-lib
# (libstdc++, libgcc_s).
stage_base() {
  rm -rf "${SRC}" "${OUTDIR}/bb" "${OUTDIR}/dpkg"
  mkdir -p "${SRC}" "${OUTDIR}/bb/bin"
  check_owned busybox-static /usr/bin/busybox
  cp /usr/bin/busybox "${OUTDIR}/bb/bin/busybox"
  ln -s busybox "${OUTDIR}/bb/bin/sh"

  stage_lib glibc libc6 libc.so.6 ld-linux-x86-64.so.2 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2
  stage_file glibc bin libc-bin /usr/bin/{ldd,getconf,locale,iconv}
  stage_lib gcc-12-lib libstdc++6 libstdc++.so.6.0.30
  stage_lib gcc-12-lib libgcc-s1 libgcc_s.so.1
}

# ---------------------------------------------------------------------------
# The Nix expression. Every package copies its staged tree into $out and
# lists its dependencies' store paths in nix-support/propagated-build-inputs,
# which is how Nix finds the references.

# nix_prelude prints the start of closure.nix, the let-bindings both
# closures build with: manifest, busybox, src, mk, depsList, pkg. The
# script's write_expression goes on from there.
nix_prelude() {
  cat <<'EOF'
let
  inherit (builtins) concatStringsSep div elemAt genList length;
  manifest = import ./src/manifest.nix;

  busybox = builtins.path { path = ./bb; name = "busybox-static"; };
  src = name: builtins.path { path = ./src + "/${name}"; name = "${name}-source"; };

  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${busybox}/bin/sh";
    args = [ "-c" ("set -eu\n" + script) ];
    PATH = "${busybox}/bin";
  };

  depsList = deps: ''
    mkdir -p $out/nix-support
    for d in ${concatStringsSep " " (map toString deps)}; do
      echo "$d" >>$out/nix-support/propagated-build-inputs
    done
  '';

  pkg = { name, deps ? [ ], post ? "" }: mk name ''
    mkdir -p $out
    cp -a ${src name}/. $out/
    find $out -type d -exec chmod u+w {} +
    ${depsList deps}
    ${post}
  '';

EOF
}

# ---------------------------------------------------------------------------
# Building, signing, caching.

build_closure() {
  local root
  root=$(nix_run nix-build --store "${STORE}" --option sandbox true --max-jobs "$(nproc)" \
    --no-out-link "${OUTDIR}/closure.nix" 2> >(grep -vE '^(building |these |  /nix/store/)' >&2 || true))
  [[ -n "${root}" ]] || die "nix-build printed no root path"
  echo "${root}" >"${OUTDIR}/root-path"
  log "root: ${root}"
}

ensure_key() {
  if [[ ! -s "${OUTDIR}/secret-key" ]]; then
    (umask 077 && nix_run nix key generate-secret --key-name "${KEY_NAME}" >"${OUTDIR}/secret-key")
  fi
  nix_run nix key convert-secret-to-public <"${OUTDIR}/secret-key" >"${OUTDIR}/public-key"
  echo >>"${OUTDIR}/public-key"
}

# write_cache COMPRESSION [EXTRA-PARAMS]: nix copy the closure into cache-COMPRESSION.
write_cache() {
  local comp="$1" extra="${2:-}"
  local url="file://${OUTDIR}/cache-${comp}?compression=${comp}&secret-key=${OUTDIR}/secret-key${extra}"
  nix_run nix copy --store "${STORE}" --to "${url}" "$(cat "${OUTDIR}/root-path")" \
    2> >(grep -v '^copying path' >&2 || true)
  local n
  n=$(find "${OUTDIR}/cache-${comp}" -maxdepth 1 -name '*.narinfo' | wc -l)
  log "cache-${comp}: ${n} narinfos, $(du -sh "${OUTDIR}/cache-${comp}/nar" | cut -f1)"
}

# compute_stats writes OUTDIR/stats.txt (hack/bench-fetch.sh reads it) and
# dies if the closure is smaller than MIN_PATHS or MIN_BYTES.
compute_stats() {
  local root store_dir="${OUTDIR}/build"
  root=$(cat "${OUTDIR}/root-path")
  local paths nar_bytes
  paths=$(nix_run nix path-info --store "${STORE}" -r "${root}" | wc -l)
  nar_bytes=$(nix_run nix path-info --store "${STORE}" -rs "${root}" | awk '{ s += $2 } END { print s }')
  # What the closure holds on disk: regular-file bytes, files, symlinks, dirs.
  local files
  files=$(nix_run nix path-info --store "${STORE}" -r "${root}" | sed "s|^|${store_dir}|" |
    xargs find | xargs -d '\n' stat -c '%F %s %A' | awk '
      /^regular/       { f++; b += $(NF-1); if ($NF ~ /x/) x++ }
      /^symbolic link/ { l++ }
      /^directory/     { d++ }
      END { printf "%d %d %d %d %d", b, f, x, l, d }')
  local file_bytes nfiles nexec nlinks ndirs
  read -r file_bytes nfiles nexec nlinks ndirs <<<"${files}"
  local single_file
  single_file=$(nix_run nix path-info --store "${STORE}" -r "${root}" |
    while read -r p; do if [[ -f "${store_dir}${p}" ]]; then echo "${p}"; fi; done | wc -l)

  {
    echo "root:              ${root}"
    echo "store paths:       ${paths} (${single_file} single-file)"
    echo "NAR bytes:         ${nar_bytes} ($((nar_bytes / 1000000)) MB)"
    echo "file bytes:        ${file_bytes} in ${nfiles} files (${nexec} executable), ${nlinks} symlinks, ${ndirs} dirs"
    local c
    for c in xz zstd; do
      local comp_bytes
      comp_bytes=$(cat "${OUTDIR}/cache-${c}"/*.narinfo | awk '/^FileSize:/ { s += $2 } END { print s }')
      echo "cache-${c}:  $(printf '%12d' "${comp_bytes}") compressed bytes (ratio $(awk -v a="${nar_bytes}" -v b="${comp_bytes}" 'BEGIN { printf "%.2f", a / b }'))"
    done
    echo "largest NARs (bytes):"
    nix_run nix path-info --store "${STORE}" -rs "${root}" | sort -k2 -rn | awk 'NR <= 5 { printf "  %11d  %s\n", $2, $1 }'
    echo "xz parallel-compression: ${XZ_PARALLEL}"
  } >"${OUTDIR}/stats.txt"

  ((paths >= MIN_PATHS)) || die "closure has only ${paths} paths (want >= ${MIN_PATHS})"
  ((nar_bytes >= MIN_BYTES)) || die "closure has only ${nar_bytes} bytes (want >= ${MIN_BYTES})"
}

# reset_outdir: keeps a half-made OUTDIR of this same version (nix-build and
# nix copy both resume), removes one made by another version.
reset_outdir() {
  local version="$1"
  if [[ -f "${OUTDIR}/.building" && "$(cat "${OUTDIR}/.building")" == "${version}" ]]; then
    log "resuming a half-made ${OUTDIR}"
    return
  fi
  if [[ -e "${OUTDIR}/build" || -e "${OUTDIR}/cache-xz" || -e "${OUTDIR}/cache-zstd" ]]; then
    log "removing ${OUTDIR} contents made by another version of this script"
    chmod -R u+w "${OUTDIR}/build" 2>/dev/null || true
    rm -rf "${OUTDIR}/build" "${OUTDIR}/cache-xz" "${OUTDIR}/cache-zstd" "${OUTDIR}/.complete"
  fi
  echo "${version}" >"${OUTDIR}/.building"
}

# mkbench_main OUTDIR: builds the closure and its caches into OUTDIR, or
# only prints the stats if a complete OUTDIR of this version is there.
mkbench_main() {
  (($# == 1)) || usage
  mkdir -p "$1"
  OUTDIR=$(cd "$1" && pwd)
  SRC="${OUTDIR}/src"
  local version
  version=$(script_version)

  if [[ -f "${OUTDIR}/.complete" && "$(cat "${OUTDIR}/.complete")" == "${version}" ]]; then
    log "${OUTDIR} is complete (version ${version}), nothing to do"
    cat "${OUTDIR}/stats.txt"
    return
  fi

  ensure_packages
  STORE="local?root=${OUTDIR}/build"
  reset_outdir "${version}"
  local start=${SECONDS}
  timed "stage package files" stage_sources
  write_expression
  timed "nix-build (sandboxed, chroot store ${OUTDIR}/build)" build_closure
  ensure_key
  local xz_extra=""
  [[ "${XZ_PARALLEL}" == 1 ]] && xz_extra="&parallel-compression=true"
  timed "write cache-xz" write_cache xz "${xz_extra}"
  timed "write cache-zstd" write_cache zstd
  timed "stats" compute_stats
  rm -rf "${SRC}" "${OUTDIR}/bb" "${OUTDIR}/dpkg"
  echo "${version}" >"${OUTDIR}/.complete"
  rm -f "${OUTDIR}/.building"
  log "done in $((SECONDS - start))s"
  cat "${OUTDIR}/stats.txt"
}
