# Sourced by hack/install-deps.sh and hack/kind/deps.sh: what both need to
# install Debian packages.

# missing_packages PKG...: prints the packages dpkg does not have installed.
missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
