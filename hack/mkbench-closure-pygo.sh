#!/usr/bin/env bash
# Copyright 2025 The storepkg Authors.
#
# mkbench-closure-pygo.sh OUTDIR
#
# The cold fetch benchmark's second closure, shaped unlike the first
# (hack/mkbench-closure.sh): one large many-file path and hundreds of small
# ones. Built with real Nix and offline, it has ~320 store paths and ~700 MB
# of NARs:
#
#   - a Go toolchain, one path of ~12,000 files (~470 MB): Debian's GOROOT
#     (golang-1.19-go and golang-1.19-src) as one tree
#   - CPython 3.11 as three paths: the interpreter with libpython and the
#     minimal stdlib, the rest of the stdlib, its extension modules
#   - ~310 single-library paths, one per shared library of the Debian
#     packages declared below (every regular file that dpkg lists for the
#     package directly in /usr/lib/x86_64-linux-gnu), with a multi-level
#     dependency graph; plus glibc and the gcc runtime libraries
#
# and writes, as the first script does:
#
#   OUTDIR/cache-xz      file:// binary cache, compression=xz
#   OUTDIR/cache-zstd    file:// binary cache, compression=zstd
#   OUTDIR/public-key    the key that signs both caches (bench-pygo-1:...)
#   OUTDIR/root-path     the closure's root store path
#   OUTDIR/stats.txt     path count, bytes, file mix, compressed sizes
#
# The closure is built into a private chroot store (OUTDIR/build), never into
# the machine's /nix. The Debian 12 packages it stages files of are declared
# below and installed when missing, so the closure is the same on every
# Debian 12 machine whatever else is installed; a file dpkg lists that is
# missing is an error, as is a closure smaller than the shape above.
#
# Running it again on a complete OUTDIR only prints the stats (a stamp file
# records the version of this script and of hack/mkbench-lib.sh that made
# it; a different version rebuilds from scratch). XZ_PARALLEL as in
# hack/mkbench-closure.sh.

set -o errexit -o nounset -o pipefail -o errtrace

HOST_LIB=/usr/lib/x86_64-linux-gnu
MIN_LIB_PATHS=280
MIN_PATHS=$((MIN_LIB_PATHS + 6))
MIN_GO_FILES=10000
MIN_BYTES=$((600 * 1000 * 1000))
XZ_PARALLEL="${XZ_PARALLEL:-0}"
KEY_NAME=bench-pygo-1

TOOL_PACKAGES=(xz-utils zstd)

# The Debian packages the large paths are staged from.
STAGED_PACKAGES=(
  busybox-static libc6 libc-bin libstdc++6 libgcc-s1
  golang-1.19-go golang-1.19-src
  python3.11-minimal libpython3.11 libpython3.11-minimal libpython3.11-stdlib
)

# Each shared library these packages install directly in HOST_LIB becomes
# one store path named after its file (libssl.so.3 -> libssl-3). None of
# them is a package of STAGED_PACKAGES.
LIB_PACKAGES=(
  libabsl20220623 libacl1 libaom3 libapparmor1 libappstream4 libapt-pkg6.0 libarchive13 libargon2-1
  libasan8 libasound2 libassuan0 libatm1 libatomic1 libattr1 libaudit1 libavahi-client3
  libavahi-common3 libavif15 libbabeltrace1 libbinutils libblkid1 libboost-context1.74.0
  libboost-filesystem1.74.0 libboost-iostreams1.74.0 libboost-program-options1.74.0
  libboost-regex1.74.0 libbpf1 libbrotli1 libbsd0 libbz2-1.0 libcap-ng0 libcap2 libcbor0.8
  libcc1-0 libcom-err2 libcpuid16 libcrypt1 libcryptsetup12 libctf-nobfd0 libctf0 libcups2
  libcurl3-gnutls libcurl3-nss libcurl4 libdatrie1 libdav1d6 libdb5.3 libdbus-1-3 libdconf1
  libde265-0 libdebuginfod1 libdeflate0 libdevmapper1.02.1 libduktape207 libdw1 libedit2
  libelf1 libevent-2.1-7 libevent-core-2.1-7 libexpat1 libext2fs2 libfdisk1 libffi8 libfido2-1
  libfontconfig1 libfontenc1 libfreetype6 libfribidi0 libgav1-1 libgc1 libgcrypt20 libgd3
  libgdbm-compat4 libgdbm6 libgif7 libgirepository-1.0-1 libgmp10 libgmpxx4ldbl libgnutls-dane0
  libgnutls-openssl27 libgnutls30 libgnutlsxx30 libgomp1 libgpg-error0 libgpm2 libgprofng0
  libgraphite2-3 libgssapi-krb5-2 libgstreamer1.0-0 libharfbuzz0b libheif1 libhogweed6 libicu72
  libidn2-0 libip4tc2 libip6tc2 libipt2 libisl23 libitm1 libjansson4 libjbig0 libjpeg62-turbo libjq1
  libjson-c5 libk5crypto3 libkeyutils1 libkmod2 libkrb5-3 libkrb5support0 libksba8 liblcms2-2
  libldap-2.5-0 liblerc4 liblsan0 liblz4-1 liblzma5 libmagic1 libmd0 libmnl0 libmount1 libmpc3
  libmpfr6 libncurses6 libncursesw6 libnetfilter-conntrack3 libnettle8 libnfnetlink0 libnftnl11
  libnghttp2-14 libnpth0 libnsl2 libnspr4 libnss3 libnuma1 libonig5 libopencsd1 libp11-kit0
  libpackagekit-glib2-18 libpam0g libpciaccess0 libpcre2-8-0 libpcsclite1 libperl5.36 libpfm4
  libpipeline1 libpixman-1-0 libpkgconf3 libpng16-16 libpolkit-agent-1-0 libpolkit-gobject-1-0
  libpq5 libproc2-0 libpsl5 libquadmath0 librav1e0 libreadline8 librtmp1 libsasl2-2 libseccomp2
  libselinux1 libsemanage2 libsensors5 libsepol2 libslang2 libslirp0 libsmartcols1 libsodium23
  libsource-highlight4v5 libsqlite3-0 libss2 libssh2-1 libssl3 libsvtav1enc1 libsystemd0 libtasn1-6
  libtcl8.6 libthai0 libtiff6 libtinfo6 libtirpc3 libtsan2 libubsan1 libuchardet0 libudev1
  libunbound8 libunistring2 libunwind8 libutempter0 libuuid1 libwayland-client0 libwayland-server0
  libwebp7 libxslt1.1 libyaml-0-2 libyuv0 libz3-4 libzstd1 zlib1g
)

trap 'echo "ERROR: ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2' ERR

LOG_PREFIX=mkbench-closure-pygo
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/mkbench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/mkbench-lib.sh"

all_packages() {
  printf '%s\n' "${TOOL_PACKAGES[@]}" "${STAGED_PACKAGES[@]}" "${LIB_PACKAGES[@]}" | LC_ALL=C sort -u
}

# ---------------------------------------------------------------------------
# Staging: files of Debian packages into OUTDIR/src/<name>/, one dir per
# store path, with hack/mkbench-lib.sh's helpers.

# package_libs PKG: the regular shared-library files PKG installs directly
# in HOST_LIB, by file name, sorted.
package_libs() {
  local list f
  list=$(pkg_list "$1")
  awk -v d="${HOST_LIB}/" 'index($0, d) == 1 && substr($0, length(d) + 1) ~ /^[^\/]+\.so(\.[0-9]+)*$/' "${list}" |
    while read -r f; do
      [[ -e "${f}" || -L "${f}" ]] || die "${f} of the Debian package $1 is missing"
      if [[ -f "${f}" && ! -L "${f}" ]]; then echo "${f##*/}"; fi
    done
}

stage_sources() {
  stage_base

  # GOROOT: Debian splits it between /usr/lib/go-1.19 (binaries, compiled
  # packages) and /usr/share/go-1.19 (sources), joined by symlinks; here
  # both trees are one directory, share/go, without those symlinks.
  SKIP_LINKS="/usr/lib/go-1.19/api /usr/lib/go-1.19/misc /usr/lib/go-1.19/src /usr/lib/go-1.19/test" \
    stage_tree go-1.19 share /usr/lib/go-1.19 golang-1.19-go
  stage_tree go-1.19 share /usr/share/go-1.19 golang-1.19-src
  mv "${SRC}/go-1.19/share/go-1.19" "${SRC}/go-1.19/share/go"
  local ngo
  ngo=$(find "${SRC}/go-1.19" -type f | wc -l)
  ((ngo >= MIN_GO_FILES)) || die "the Go toolchain path has ${ngo} files (want >= ${MIN_GO_FILES})"

  stage_file python3-3.11 bin python3.11-minimal /usr/bin/python3.11
  stage_lib python3-3.11 libpython3.11 libpython3.11.so.1.0
  stage_tree python3-3.11 lib /usr/lib/python3.11 libpython3.11-minimal
  stage_tree python3.11-stdlib lib /usr/lib/python3.11 libpython3.11-stdlib
  mkdir -p "${SRC}/python3.11-dynload/lib/python3.11"
  mv "${SRC}/python3.11-stdlib/lib/python3.11/lib-dynload" "${SRC}/python3.11-dynload/lib/python3.11/"

  local pkg f name names=() seen=" " libs=()
  for pkg in "${LIB_PACKAGES[@]}"; do
    local files=()
    mapfile -t files < <(package_libs "${pkg}")
    ((${#files[@]} > 0)) || die "the Debian package ${pkg} installs no shared library in ${HOST_LIB}"
    for f in "${files[@]}"; do
      name="${f%%.so*}"
      [[ "${f}" == *.so.* ]] && name="${name}-${f#*.so.}"
      valid_name "${name}" || die "${f}: ${name} is not a valid store path name"
      [[ "${seen}" != *" ${name} "* ]] || die "${f} of ${pkg}: a second library named ${name}"
      seen+="${name} "
      stage_lib "${name}" "${pkg}" "${f}"
      names+=("${name}")
    done
  done
  ((${#names[@]} >= MIN_LIB_PATHS)) || die "${#names[@]} library paths (want >= ${MIN_LIB_PATHS})"
  mapfile -t names < <(printf '%s\n' "${names[@]}" | LC_ALL=C sort)
  for f in "${names[@]}"; do
    libs+=("\"${f}\"")
  done
  printf '{\n  libs = [ %s ];\n}\n' "${libs[*]}" >"${SRC}/manifest.nix"
  log "staged $(du -sh "${SRC}" | cut -f1) from $(all_packages | wc -l) Debian packages (${#libs[@]} libraries, Go ${ngo} files)"
}

# ---------------------------------------------------------------------------
# The Nix expression, after hack/mkbench-lib.sh's nix_prelude.

write_expression() {
  {
    nix_prelude
    cat <<'EOF'
  # libfoo.so.1.2.3 -> libfoo.so, as a -dev package would add.
  libPost = ''
    cd $out/lib
    for f in *.so.*; do
      [ -L "$f" ] && continue
      ln -sf "$f" "$(echo "$f" | sed 's/\.so\..*//').so"
    done
  '';

  glibc = pkg { name = "glibc"; post = "chmod +x $out/bin/*"; };
  gcclib = pkg { name = "gcc-12-lib"; deps = [ glibc ]; post = libPost; };

  # lib i depends on lib i/2 and lib i/3: several levels, shared leaves.
  nlibs = length manifest.libs;
  lib = i: elemAt libs i;
  libs = genList (i: pkg {
    name = elemAt manifest.libs i;
    deps = [ glibc ]
      ++ (if i > 0 then [ (lib (div i 2)) ] else [ ])
      ++ (if i > 2 && div i 3 != div i 2 then [ (lib (div i 3)) ] else [ ])
      ++ (if i - (div i 7) * 7 == 0 then [ gcclib ] else [ ]);
    post = libPost;
  }) nlibs;
  someLibs = first: n: genList (k: lib (first + k * 13 - (div (first + k * 13) nlibs) * nlibs)) n;

  go = pkg {
    name = "go-1.19";
    deps = [ glibc ];
    post = "mkdir -p $out/bin; ln -s ../share/go/bin/go $out/bin/go; ln -s ../share/go/bin/gofmt $out/bin/gofmt";
  };
  pystdlib = pkg { name = "python3.11-stdlib"; };
  pydynload = pkg { name = "python3.11-dynload"; deps = [ glibc ] ++ someLibs 4 12; };
  python = pkg {
    name = "python3-3.11";
    deps = [ glibc pystdlib pydynload ] ++ someLibs 2 6;
    post = "ln -s python3.11 $out/bin/python3";
  };

  everything = [ glibc gcclib go python pystdlib pydynload ] ++ libs;
in
mk "storepkg-bench-pygo-closure" ''
  mkdir -p $out/bin
  ln -s ${go}/bin/go $out/bin/go
  ln -s ${python}/bin/python3 $out/bin/python3
  ${depsList everything}
''
EOF
  } >"${OUTDIR}/closure.nix"
}

mkbench_main "$@"
