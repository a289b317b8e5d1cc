#!/usr/bin/env bash
# Copyright 2025 The storepkg Authors.
#
# mkbench-closure.sh OUTDIR
#
# Builds, with real Nix and offline, a benchmark closure of ~130 store paths
# (~350 MB unpacked) and writes two signed binary caches of it:
#
#   OUTDIR/cache-xz      file:// binary cache, compression=xz
#   OUTDIR/cache-zstd    file:// binary cache, compression=zstd
#   OUTDIR/public-key    the key that signs both caches (bench-1:...)
#   OUTDIR/root-path     the closure's root store path
#   OUTDIR/stats.txt     path count, bytes, file mix, compressed sizes
#
# The closure is built into a private chroot store (OUTDIR/build), never into
# the machine's /nix. Its content is real, compressible data: files of the
# Debian 12 packages declared below (shared libraries, binaries,
# interpreters' libraries, headers, text data), which this script installs
# when they are missing, so the closure is the same on every Debian 12
# machine. Only files that dpkg lists for a declared package are staged; one
# that is missing is an error. Arranged as Nix packages:
#
#   - a few large paths (libLLVM, ICU, python, perl, git, vim runtime)
#   - ~100 small library paths with a multi-level dependency graph and shared
#     leaves, plus header-only "-dev" paths with many small files
#   - data paths with thousands of small files and symlinks (tzdata, locales,
#     the MIME database)
#   - single-file store paths (an executable wrapper, a config file, a
#     builtins.toFile text), self-references, absolute and relative symlinks
#
# The benchmarks (pkg/shim/*bench*_test.go) look store paths up by name
# ("libssl-3", "python3-3.11.2", ...): the names below are fixed, whatever
# the Debian package versions.
#
# Running it again on a complete OUTDIR only prints the stats (a stamp file
# records the version of this script and of hack/mkbench-lib.sh that made
# it; a different version rebuilds from scratch).
#
# Environment:
#   XZ_PARALLEL=1   write the xz cache with parallel-compression=true (faster
#                   to write, but large NARs become multi-block .xz files,
#                   which are not what a default Nix cache serves). Default 0.

set -o errexit -o nounset -o pipefail -o errtrace

HOST_LIB=/usr/lib/x86_64-linux-gnu
MIN_PATHS=120
MIN_BYTES=$((220 * 1000 * 1000))
XZ_PARALLEL="${XZ_PARALLEL:-0}"
KEY_NAME=bench-1

# What the script itself runs.
TOOL_PACKAGES=(xz-utils zstd)

# Small libraries, "DEBIAN-PACKAGE FILE...": each FILE (in HOST_LIB) becomes
# one store path named after it: libssl.so.3 -> libssl-3,
# libyaml-0.so.2.0.9 -> libyaml-0-2.0.9. Files of packages the large paths
# below stage are not here.
SMALL_LIBS=(
  "libacl1 libacl.so.1.1.2301"
  "libapparmor1 libapparmor.so.1.8.4"
  "libarchive13 libarchive.so.13.6.2"
  "libargon2-1 libargon2.so.1"
  "libatomic1 libatomic.so.1.2.0"
  "libattr1 libattr.so.1.1.2501"
  "libaudit1 libaudit.so.1.0.0"
  "libblkid1 libblkid.so.1.1.0"
  "libbrotli1 libbrotlicommon.so.1.0.9 libbrotlidec.so.1.0.9 libbrotlienc.so.1.0.9"
  "libbsd0 libbsd.so.0.11.7"
  "libbz2-1.0 libbz2.so.1.0.4"
  "libcap-ng0 libcap-ng.so.0.0.0"
  "libcap2 libcap.so.2.66 libpsx.so.2.66"
  "libcom-err2 libcom_err.so.2.1"
  "libcrypt1 libcrypt.so.1.1.0"
  "libcurl3-gnutls libcurl-gnutls.so.4.8.0"
  "libcurl3-nss libcurl-nss.so.4.8.0"
  "libcurl4 libcurl.so.4.8.0"
  "libdeflate0 libdeflate.so.0"
  "libedit2 libedit.so.2.0.70"
  "libevent-2.1-7 libevent-2.1.so.7.0.1"
  "libevent-core-2.1-7 libevent_core-2.1.so.7.0.1"
  "libexpat1 libexpat.so.1.8.10 libexpatw.so.1.8.10"
  "libfdisk1 libfdisk.so.1.1.0"
  "libffi8 libffi.so.8.1.2"
  "libgc1 libgc.so.1.5.1"
  "libgcrypt20 libgcrypt.so.20.4.1"
  "libgdbm6 libgdbm.so.6.0.0"
  "libgif7 libgif.so.7.2.0"
  "libglib2.0-0 libglib-2.0.so.0.7400.6 libgmodule-2.0.so.0.7400.6 libgobject-2.0.so.0.7400.6"
  "libgmp10 libgmp.so.10.4.1"
  "libgpg-error0 libgpg-error.so.0.33.1"
  "libgpm2 libgpm.so.2"
  "libgssapi-krb5-2 libgssapi_krb5.so.2.2"
  "libhogweed6 libhogweed.so.6.6"
  "libidn2-0 libidn2.so.0.3.8"
  "libjansson4 libjansson.so.4.14.0"
  "libjpeg62-turbo libjpeg.so.62.3.0"
  "libjq1 libjq.so.1.0.4"
  "libjson-c5 libjson-c.so.5.2.0"
  "libk5crypto3 libk5crypto.so.3.1"
  "libkeyutils1 libkeyutils.so.1.10"
  "libkmod2 libkmod.so.2.4.0"
  "libkrb5-3 libkrb5.so.3.3"
  "libkrb5support0 libkrb5support.so.0.1"
  "libldap-2.5-0 liblber-2.5.so.0.1.8 libldap-2.5.so.0.1.8"
  "liblz4-1 liblz4.so.1.9.4"
  "liblzma5 liblzma.so.5.4.1"
  "libmd0 libmd.so.0.0.5"
  "libmnl0 libmnl.so.0.2.0"
  "libmount1 libmount.so.1.1.0"
  "libmpc3 libmpc.so.3.3.1"
  "libmpfr6 libmpfr.so.6.2.0"
  "libncursesw6 libformw.so.6.4 libmenuw.so.6.4 libpanelw.so.6.4"
  "libnettle8 libnettle.so.8.6"
  "libnfnetlink0 libnfnetlink.so.0.2.0"
  "libnghttp2-14 libnghttp2.so.14.24.1"
  "libnsl2 libnsl.so.2.0.1"
  "libnuma1 libnuma.so.1.0.0"
  "libonig5 libonig.so.5.3.0"
  "libp11-kit0 libp11-kit.so.0.3.0"
  "libpcre2-8-0 libpcre2-8.so.0.11.2"
  "libpipeline1 libpipeline.so.1.5.7"
  "libpng16-16 libpng16.so.16.39.0"
  "libpq5 libpq.so.5.15"
  "libpsl5 libpsl.so.5.3.4"
  "libquadmath0 libquadmath.so.0.0.0"
  "libreadline8 libhistory.so.8.2 libreadline.so.8.2"
  "librtmp1 librtmp.so.1"
  "libsasl2-2 libsasl2.so.2.0.25"
  "libseccomp2 libseccomp.so.2.5.4"
  "libselinux1 libselinux.so.1"
  "libsepol2 libsepol.so.2"
  "libsmartcols1 libsmartcols.so.1.1.0"
  "libsodium23 libsodium.so.23.3.0"
  "libsqlite3-0 libsqlite3.so.0.8.6"
  "libssh2-1 libssh2.so.1.0.1"
  "libssl3 libssl.so.3"
  "libtasn1-6 libtasn1.so.6.6.3"
  "libtinfo6 libtic.so.6.4"
  "libtirpc3 libtirpc.so.3.0.0"
  "libuchardet0 libuchardet.so.0.0.7"
  "libudev1 libudev.so.1.7.5"
  "libuuid1 libuuid.so.1.3.0"
  "libwebp7 libwebp.so.7.1.5"
  "libxxhash0 libxxhash.so.0.8.1"
  "libyaml-0-2 libyaml-0.so.2.0.9"
  "libzstd1 libzstd.so.1.5.4"
  "zlib1g libz.so.1.2.13"
)

# Header-only packages, "DEBIAN-PACKAGE DIR": the package's files under DIR
# become the store path <basename of DIR>-dev.
DEV_DIRS=(
  "libbrotli-dev /usr/include/brotli"
  "libc6-dev /usr/include/x86_64-linux-gnu/bits"
  "libfreetype-dev /usr/include/freetype2"
  "liblzma-dev /usr/include/lzma"
  "libnspr4-dev /usr/include/nspr"
  "libnss3-dev /usr/include/nss"
  "libp11-kit-dev /usr/include/p11-kit-1"
  "libpng-dev /usr/include/libpng16"
  "libpq-dev /usr/include/postgresql"
  "libreadline-dev /usr/include/readline"
  "libssl-dev /usr/include/openssl"
  "libtirpc-dev /usr/include/tirpc"
  "linux-libc-dev /usr/include/rdma"
  "linux-libc-dev /usr/include/sound"
  "nettle-dev /usr/include/nettle"
)

# The Debian packages whose files stage_sources stages (besides SMALL_LIBS
# and DEV_DIRS).
STAGED_PACKAGES=(
  busybox-static libc6 libc-bin libstdc++6 libgcc-s1 libgomp1 libicu72 libllvm15
  libncursesw6 libtinfo6 ncurses-base tzdata locales shared-mime-info linux-libc-dev
  python3.11-minimal libpython3.11 libpython3.11-minimal libpython3.11-stdlib
  perl-base libperl5.36 git vim vim-common vim-runtime
)

trap 'echo "ERROR: ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2' ERR

LOG_PREFIX=mkbench-closure
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/mkbench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/mkbench-lib.sh"

# all_packages prints every Debian package this script needs, sorted.
all_packages() {
  local spec
  {
    printf '%s\n' "${TOOL_PACKAGES[@]}" "${STAGED_PACKAGES[@]}"
    for spec in "${SMALL_LIBS[@]}" "${DEV_DIRS[@]}"; do
      echo "${spec%% *}"
    done
  } | LC_ALL=C sort -u
}

# ---------------------------------------------------------------------------
# Staging: copy files of Debian packages into OUTDIR/src/<name>/ (one dir
# per store path).

stage_sources() {
  stage_base
  stage_lib gcc-12-lib libgomp1 libgomp.so.1.0.0
  stage_lib icu4c-72.1 libicu72 libicu{data,uc,i18n,io}.so.72.1
  stage_lib llvm-15-lib libllvm15 libLLVM-15.so.1
  stage_lib ncurses-6.4 libncursesw6 libncursesw.so.6
  stage_lib ncurses-6.4 libtinfo6 libtinfo.so.6
  stage_tree ncurses-6.4 share /usr/lib/terminfo ncurses-base
  stage_tree tzdata-2025b share /usr/share/zoneinfo tzdata
  stage_tree glibc-locales share/i18n /usr/share/i18n/locales locales
  stage_tree glibc-locales share/i18n /usr/share/i18n/charmaps locales
  # The MIME database as update-mime-database makes it from the package's
  # own definitions (the machine's is made from every package's).
  stage_tree shared-mime-info-2.2 share /usr/share/mime shared-mime-info
  check_owned shared-mime-info /usr/bin/update-mime-database
  XDG_DATA_HOME="${SRC}/shared-mime-info-2.2/share" XDG_DATA_DIRS="${SRC}/shared-mime-info-2.2/share" \
    update-mime-database "${SRC}/shared-mime-info-2.2/share/mime"
  stage_tree linux-headers-6.1 include /usr/include/linux linux-libc-dev
  stage_tree linux-headers-6.1 include /usr/include/asm-generic linux-libc-dev
  stage_file python3-3.11.2 bin python3.11-minimal /usr/bin/python3.11
  stage_lib python3-3.11.2 libpython3.11 libpython3.11.so.1.0
  stage_tree python3-3.11.2 lib /usr/lib/python3.11 libpython3.11-minimal libpython3.11-stdlib
  stage_file perl-5.36.0 bin perl-base /usr/bin/perl
  stage_lib perl-5.36.0 libperl5.36 libperl.so.5.36.0
  stage_tree perl-5.36.0 lib/perl5 "${HOST_LIB}/perl/5.36.0" libperl5.36
  stage_tree git-2.39.5 libexec /usr/lib/git-core git
  stage_file vim-9.0 bin vim /usr/bin/vim.basic
  stage_tree vim-9.0 share/vim /usr/share/vim/vim90 vim-runtime vim-common

  local spec pkg f names=() libs=() devs=()
  for spec in "${SMALL_LIBS[@]}"; do
    read -r pkg f <<<"${spec}"
    for f in ${f}; do
      local name="${f%%.so.*}-${f#*.so.}"
      valid_name "${name}" || die "${f}: ${name} is not a valid store path name"
      stage_lib "${name}" "${pkg}" "${f}"
      names+=("${name}")
    done
  done
  mapfile -t names < <(printf '%s\n' "${names[@]}" | LC_ALL=C sort)
  for f in "${names[@]}"; do
    libs+=("\"${f}\"")
  done
  for spec in "${DEV_DIRS[@]}"; do
    read -r pkg f <<<"${spec}"
    stage_tree "${f##*/}-dev" include "${f}" "${pkg}"
    devs+=("\"${f##*/}-dev\"")
  done
  printf '{\n  libs = [ %s ];\n  devs = [ %s ];\n}\n' "${libs[*]}" "${devs[*]}" >"${SRC}/manifest.nix"
  log "staged $(du -sh "${SRC}" | cut -f1) from $(all_packages | wc -l) Debian packages (${#libs[@]} small libs, ${#devs[@]} -dev packages)"
}

# ---------------------------------------------------------------------------
# The Nix expression, after hack/mkbench-lib.sh's nix_prelude.

write_expression() {
  {
    nix_prelude
    cat <<'EOF'
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
    storepkg benchmark closure: files of Debian packages arranged as Nix packages.
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
  } >"${OUTDIR}/closure.nix"
}

mkbench_main "$@"
