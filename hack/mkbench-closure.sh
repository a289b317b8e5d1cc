#!/usr/bin/env bash
# Copyright 2025 The storepkg Authors.
#
# mkbench-closure.sh OUTDIR
#
# Builds, with real Nix and offline, a benchmark closure of ~130 store paths
# (~370 MB unpacked) and writes two signed binary caches of it:
#
#   OUTDIR/cache-xz      file:// binary cache, compression=xz
#   OUTDIR/cache-zstd    file:// binary cache, compression=zstd
#   OUTDIR/public-key    the key that signs both caches (bench-1:...)
#   OUTDIR/root-path     the closure's root store path
#   OUTDIR/stats.txt     path count, bytes, file mix, compressed sizes
#
# The closure is built into a private chroot store (OUTDIR/build), never into
# the machine's /nix. Its content is real, compressible data copied from the
# host (shared libraries, binaries, interpreters' libraries, text data) so the
# compression ratios and decode speeds are realistic:
#
#   - a few large paths (libLLVM, ICU data, python, git, vim runtime)
#   - ~100 small library paths with a multi-level dependency graph and shared
#     leaves, plus header-only "-dev" paths with many small files
#   - data paths with thousands of small files and symlinks (tzdata, locales)
#   - single-file store paths (an executable wrapper, a config file, a
#     builtins.toFile text), self-references, absolute and relative symlinks
#
# Running it again on a complete OUTDIR only prints the stats (a stamp file
# records the version of this script that made it; a different version
# rebuilds from scratch).
#
# Environment:
#   XZ_PARALLEL=1   write the xz cache with parallel-compression=true (faster
#                   to write, but large NARs become multi-block .xz files,
#                   which are not what a default Nix cache serves). Default 0.

set -o errexit -o nounset -o pipefail -o errtrace

HOST_LIB=/usr/lib/x86_64-linux-gnu
MIN_PATHS=120
MIN_BYTES=$((220 * 1000 * 1000))
SMALL_LIBS=100
DEV_PKGS=15
XZ_PARALLEL="${XZ_PARALLEL:-0}"

trap 'echo "ERROR: ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2' ERR

log() { echo "+++ [$(date +%H:%M:%S)] $*" >&2; }
die() { echo "ERROR: $*" >&2; exit 1; }

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

# ensure_tools installs what this script needs when it can (root + apt-get).
ensure_tools() {
  local missing=()
  command -v nix-build >/dev/null || missing+=(nix-bin)
  [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v zstd >/dev/null || missing+=(zstd)
  if ((${#missing[@]} == 0)); then
    return
  fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing tools; install the Debian packages: ${missing[*]}"
  fi
}

# Nix talks to no substituter and needs no build users: everything is local.
nix_env() {
  unset NIX_REMOTE
  export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nbuild-users-group =\nwarn-dirty = false'
  STORE="local?root=${OUTDIR}/build"
}

script_version() {
  { sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; echo "xz-parallel=${XZ_PARALLEL}"; } | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------------------
# Staging: copy host files into OUTDIR/src/<package>/ (one dir per package).

# stage_file PKG SUBDIR FILE...: copies files (dereferenced) into PKG/SUBDIR.
stage_file() {
  local pkg="$1" sub="$2"; shift 2
  mkdir -p "${SRC}/${pkg}/${sub}"
  local f
  for f in "$@"; do
    if [[ -e "${f}" ]]; then
      cp -L "${f}" "${SRC}/${pkg}/${sub}/"
    else
      log "warning: ${f} not found on this host, skipped"
    fi
  done
}

# stage_tree PKG SUBDIR DIR: copies a directory tree, keeping its symlinks.
stage_tree() {
  local pkg="$1" sub="$2" dir="$3"
  if [[ ! -d "${dir}" ]]; then
    log "warning: ${dir} not found on this host, skipped"
    return
  fi
  mkdir -p "${SRC}/${pkg}/${sub}"
  cp -a "${dir}" "${SRC}/${pkg}/${sub}/"
  find "${SRC}/${pkg}/${sub}" -name __pycache__ -prune -exec rm -rf {} +
}

# A store path name may only hold these characters.
valid_name() { [[ "$1" =~ ^[A-Za-z0-9+._?=-]+$ && "$1" != .* ]]; }

# pick_spread N: reads lines on stdin, prints N of them evenly spread.
pick_spread() {
  awk -v n="$1" '{ l[NR] = $0 } END { if (NR <= n) { for (i = 1; i <= NR; i++) print l[i]; exit }
    for (i = 0; i < n; i++) print l[int(i * NR / n) + 1] }'
}

# Small libraries: regular lib*.so.* files between 16 KB and 1.5 MB that the
# large packages below do not already hold.
list_small_libs() {
  find "${HOST_LIB}" -maxdepth 1 -type f -name 'lib*.so.*' -size +16k -size -1536k -printf '%f\n' |
    grep -vE '^lib(c|m|dl|rt|pthread|resolv|stdc\+\+|gcc_s|gomp|icu|LLVM|python|perl|ncurses|tinfo)[.-]' |
    LC_ALL=C sort | pick_spread "${SMALL_LIBS}"
}

# Header-only packages: /usr/include subdirectories of 40 KB to 3 MB.
list_dev_dirs() {
  local d
  for d in /usr/include/*/; do
    d="${d%/}"
    local kb
    kb=$(du -sk "${d}" | cut -f1)
    if ((kb >= 40 && kb <= 3072)) && valid_name "${d##*/}"; then
      echo "${d##*/}"
    fi
  done | LC_ALL=C sort | pick_spread "${DEV_PKGS}"
}

stage_sources() {
  rm -rf "${SRC}" "${OUTDIR}/bb"
  mkdir -p "${SRC}" "${OUTDIR}/bb/bin"
  cp /bin/busybox "${OUTDIR}/bb/bin/busybox"
  ln -s busybox "${OUTDIR}/bb/bin/sh"

  stage_file glibc lib "${HOST_LIB}"/{libc.so.6,ld-linux-x86-64.so.2,libm.so.6,libpthread.so.0,libdl.so.2,librt.so.1,libresolv.so.2}
  stage_file glibc bin /usr/bin/{ldd,getconf,locale,iconv}
  stage_file gcc-12-lib lib "${HOST_LIB}"/{libstdc++.so.6.0.30,libgcc_s.so.1,libgomp.so.1.0.0}
  stage_file icu4c-72.1 lib "${HOST_LIB}"/libicu{data,uc,i18n,io}.so.72.1
  stage_file llvm-15-lib lib "${HOST_LIB}/libLLVM-15.so.1"
  stage_file ncurses-6.4 lib "${HOST_LIB}"/{libncursesw.so.6,libtinfo.so.6}
  stage_tree ncurses-6.4 share /lib/terminfo
  stage_tree tzdata-2025b share /usr/share/zoneinfo
  stage_tree glibc-locales share/i18n /usr/share/i18n/locales
  stage_tree glibc-locales share/i18n /usr/share/i18n/charmaps
  stage_tree shared-mime-info-2.2 share /usr/share/mime
  stage_tree linux-headers-6.1 include /usr/include/linux
  stage_tree linux-headers-6.1 include /usr/include/asm-generic
  stage_file python3-3.11.2 bin /usr/bin/python3.11
  stage_file python3-3.11.2 lib "${HOST_LIB}/libpython3.11.so.1.0"
  stage_tree python3-3.11.2 lib /usr/lib/python3.11
  stage_file perl-5.36.0 bin /usr/bin/perl
  stage_file perl-5.36.0 lib "${HOST_LIB}/libperl.so.5.36.0"
  stage_tree perl-5.36.0 lib/perl5 "${HOST_LIB}/perl/5.36.0"
  stage_tree git-2.39.5 libexec /usr/lib/git-core
  stage_file vim-9.0 bin /usr/bin/vim.basic
  stage_tree vim-9.0 share/vim /usr/share/vim/vim90

  local f libs=() devs=()
  while read -r f; do
    local name="${f%%.so.*}-${f#*.so.}"
    valid_name "${name}" || continue
    stage_file "${name}" lib "${HOST_LIB}/${f}"
    libs+=("\"${name}\"")
  done < <(list_small_libs)
  while read -r f; do
    stage_tree "${f}-dev" include "/usr/include/${f}"
    devs+=("\"${f}-dev\"")
  done < <(list_dev_dirs)
  printf '{\n  libs = [ %s ];\n  devs = [ %s ];\n}\n' "${libs[*]}" "${devs[*]}" >"${SRC}/manifest.nix"
  log "staged $(du -sh "${SRC}" | cut -f1) from the host (${#libs[@]} small libs, ${#devs[@]} -dev packages)"
}

# ---------------------------------------------------------------------------
# The Nix expression. Every package copies its staged tree into $out and
# lists its dependencies' store paths in nix-support/propagated-build-inputs,
# which is how Nix finds the references.

write_expression() {
  cat >"${OUTDIR}/closure.nix" <<'EOF'
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

  # libfoo.so.1.2.3 -> libfoo.so symlinks and a self-referencing .pc file.
  libPost = name: ''
    cd $out/lib
    for f in *.so.*; do
      [ -L "$f" ] && continue
      b=$(echo "$f" | sed 's/\.so\..*//')
      ln -sf "$f" "$b.so"
    done
    mkdir -p $out/lib/pkgconfig
    printf 'prefix=%s\nlibdir=%s/lib\nName: ${name}\nVersion: 1\nLibs: -L%s/lib\n' $out $out $out \
      >$out/lib/pkgconfig/${name}.pc
  '';

  glibc = pkg { name = "glibc"; post = "chmod +x $out/bin/*"; };
  gcclib = pkg { name = "gcc-12-lib"; deps = [ glibc ]; post = libPost "gcc-12-lib"; };
  ncurses = pkg { name = "ncurses-6.4"; deps = [ glibc ]; };
  tzdata = pkg { name = "tzdata-2025b"; };
  locales = pkg { name = "glibc-locales"; deps = [ glibc ]; };
  mime = pkg { name = "shared-mime-info-2.2"; };
  headers = pkg { name = "linux-headers-6.1"; };

  # Small libraries: lib i depends on lib i/2 and lib i/3, so the graph has
  # several levels and shared leaves.
  nlibs = length manifest.libs;
  lib = i: elemAt libs i;
  libs = genList (i: pkg {
    name = elemAt manifest.libs i;
    deps = [ glibc ]
      ++ (if i > 0 then [ (lib (div i 2)) ] else [ ])
      ++ (if i > 2 && div i 3 != div i 2 then [ (lib (div i 3)) ] else [ ])
      ++ (if i - (div i 7) * 7 == 0 then [ gcclib ] else [ ]);
    post = libPost (elemAt manifest.libs i);
  }) nlibs;
  someLibs = first: n: genList (k: lib (first + k * 11 - (div (first + k * 11) nlibs) * nlibs)) n;

  devs = genList (i: pkg {
    name = elemAt manifest.devs i;
    deps = [ headers (lib (i * 7 - (div (i * 7) nlibs) * nlibs)) ];
  }) (length manifest.devs);

  icu = pkg { name = "icu4c-72.1"; deps = [ glibc gcclib ]; post = libPost "icu4c-72.1"; };
  llvm = pkg { name = "llvm-15-lib"; deps = [ glibc gcclib ncurses ] ++ someLibs 3 4; post = libPost "llvm-15-lib"; };
  python = pkg {
    name = "python3-3.11.2";
    deps = [ glibc ncurses tzdata mime ] ++ someLibs 5 6;
    post = "ln -s python3.11 $out/bin/python3\n" + libPost "python3-3.11.2";
  };
  perl = pkg { name = "perl-5.36.0"; deps = [ glibc locales ] ++ someLibs 7 3; post = "ln -s perl $out/bin/perl5.36.0"; };
  git = pkg {
    name = "git-2.39.5";
    deps = [ glibc perl python ] ++ someLibs 9 4;
    post = "mkdir -p $out/bin; ln -s ../libexec/git-core/git $out/bin/git";
  };
  vim = pkg {
    name = "vim-9.0";
    deps = [ glibc ncurses python ] ++ someLibs 11 2;
    post = "mv $out/bin/vim.basic $out/bin/vim; ln -s vim $out/bin/vi";
  };
  busyboxPkg = mk "busybox-1.35.0" ''
    mkdir -p $out/bin
    cp ${busybox}/bin/busybox $out/bin/busybox
    for a in $(busybox --list); do
      [ "$a" = busybox ] || ln -s busybox $out/bin/$a
    done
  '';

  # Single-file store paths.
  readme = builtins.toFile "bench-closure-readme.txt" ''
    storepkg benchmark closure: real host data arranged as Nix packages.
  '';
  pyWrapper = mk "python-wrapper" ''
    printf '#!%s/bin/python3\nimport sys\nprint(sys.version)\n' ${python} >$out
    chmod +x $out
  '';
  gitconfig = mk "gitconfig" ''
    printf '[core]\n\teditor = %s/bin/vim\n[include]\n\tpath = %s/share/git\n' ${vim} ${git} >$out
  '';

  everything = [ glibc gcclib ncurses tzdata locales mime headers icu llvm python perl git vim busyboxPkg ]
    ++ libs ++ devs;
in
mk "storepkg-bench-closure" ''
  mkdir -p $out/bin $out/share/doc $out/etc
  for p in ${concatStringsSep " " (map toString everything)}; do
    [ -d $p/bin ] || continue
    for f in $p/bin/*; do
      b=$out/bin/$(basename $f)
      [ -e $b ] || [ -L $b ] || ln -s $f $b
    done
  done
  ln -s ${pyWrapper} $out/bin/python-version
  ln -s ${readme} $out/share/doc/README
  ln -s ${gitconfig} $out/etc/gitconfig
  ${depsList everything}
''
EOF
}

# ---------------------------------------------------------------------------

build_closure() {
  local root
  root=$(nix-build --store "${STORE}" --option sandbox true --max-jobs "$(nproc)" \
    --no-out-link "${OUTDIR}/closure.nix" 2> >(grep -vE '^(building |these |  /nix/store/)' >&2 || true))
  [[ -n "${root}" ]] || die "nix-build printed no root path"
  echo "${root}" >"${OUTDIR}/root-path"
  log "root: ${root}"
}

ensure_key() {
  if [[ ! -s "${OUTDIR}/secret-key" ]]; then
    (umask 077 && nix key generate-secret --key-name bench-1 >"${OUTDIR}/secret-key")
  fi
  nix key convert-secret-to-public <"${OUTDIR}/secret-key" >"${OUTDIR}/public-key"
  echo >>"${OUTDIR}/public-key"
}

# write_cache COMPRESSION [EXTRA-PARAMS]: nix copy the closure into cache-COMPRESSION.
write_cache() {
  local comp="$1" extra="${2:-}"
  local url="file://${OUTDIR}/cache-${comp}?compression=${comp}&secret-key=${OUTDIR}/secret-key${extra}"
  nix copy --store "${STORE}" --to "${url}" "$(cat "${OUTDIR}/root-path")" \
    2> >(grep -v '^copying path' >&2 || true)
  local n
  n=$(find "${OUTDIR}/cache-${comp}" -maxdepth 1 -name '*.narinfo' | wc -l)
  log "cache-${comp}: ${n} narinfos, $(du -sh "${OUTDIR}/cache-${comp}/nar" | cut -f1)"
}

compute_stats() {
  local root store_dir="${OUTDIR}/build"
  root=$(cat "${OUTDIR}/root-path")
  local paths nar_bytes
  paths=$(nix path-info --store "${STORE}" -r "${root}" | wc -l)
  nar_bytes=$(nix path-info --store "${STORE}" -rs "${root}" | awk '{ s += $2 } END { print s }')
  # What the closure holds on disk: regular-file bytes, files, symlinks, dirs.
  local files
  files=$(nix path-info --store "${STORE}" -r "${root}" | sed "s|^|${store_dir}|" |
    xargs find | xargs -d '\n' stat -c '%F %s %A' | awk '
      /^regular/       { f++; b += $(NF-1); if ($NF ~ /x/) x++ }
      /^symbolic link/ { l++ }
      /^directory/     { d++ }
      END { printf "%d %d %d %d %d", b, f, x, l, d }')
  local file_bytes nfiles nexec nlinks ndirs
  read -r file_bytes nfiles nexec nlinks ndirs <<<"${files}"
  local single_file
  single_file=$(nix path-info --store "${STORE}" -r "${root}" |
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
    nix path-info --store "${STORE}" -rs "${root}" | sort -k2 -rn | awk 'NR <= 5 { printf "  %11d  %s\n", $2, $1 }'
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

main() {
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

  ensure_tools
  nix_env
  reset_outdir "${version}"
  local start=${SECONDS}
  timed "stage host files" stage_sources
  write_expression
  timed "nix-build (sandboxed, chroot store ${OUTDIR}/build)" build_closure
  ensure_key
  local xz_extra=""
  [[ "${XZ_PARALLEL}" == 1 ]] && xz_extra="&parallel-compression=true"
  timed "write cache-xz" write_cache xz "${xz_extra}"
  timed "write cache-zstd" write_cache zstd
  timed "stats" compute_stats
  rm -rf "${SRC}" "${OUTDIR}/bb"
  echo "${version}" >"${OUTDIR}/.complete"
  rm -f "${OUTDIR}/.building"
  log "done in $((SECONDS - start))s"
  cat "${OUTDIR}/stats.txt"
}

main "$@"
