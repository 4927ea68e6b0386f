#!/usr/bin/env bash
# Builds the Kubernetes 1.20 binaries (and the pause image's binary) from Debian's
# `kubernetes` source package, with the reflect2 fix, into a cache folder keyed by the
# Debian package version. A second run finds the cache and returns in a second.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
require_root

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

all_built() {
  local b
  for b in "${BINARIES[@]}" pause; do
    [ -x "$K8S_BIN/$b" ] && [ -s "$K8S_BIN/$b" ] || return 1
  done
}

if all_built; then
  step "Kubernetes $K8S_VERSION binaries cached in $K8S_BIN"
  exit 0
fi

# Debian's source entries are not enabled by default: add one for bookworm main that
# uses the same archive as the configured binary entries.
src_list=/etc/apt/sources.list.d/tributary-deb-src.sources
if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
  uri=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || die "cannot find Debian's archive in the apt sources to add a deb-src entry"
  step "enabling Debian source packages (bookworm main)"
  cat >"$src_list" <<EOF
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq
fi

work="$TRIBUTARY_CACHE/kubernetes-src"
mkdir -p "$work"
cd "$work"
if ! ls -d kubernetes-*/ >/dev/null 2>&1; then
  step "downloading Debian's kubernetes source package"
  apt-get source -qq --download-only kubernetes >/dev/null
  dsc=$(ls kubernetes_*.dsc | head -n1)
  step "unpacking $dsc"
  dpkg-source --no-check -x "$dsc" >/dev/null
fi
tree=$(ls -d "$work"/kubernetes-*/ | head -n1)
cd "$tree"

# Kubernetes 1.20 vendors reflect2 1.0.1, which faults under Go >= 1.18 as soon as
# the apiserver serves a custom resource. Debian ships the fixed 1.0.2.
fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
vend=vendor/github.com/modern-go/reflect2
if ! cmp -s "$fixed/reflect2.go" "$vend/reflect2.go"; then
  step "replacing vendored reflect2 with Debian's 1.0.2"
  rm -f "$vend"/*.go "$vend"/*.s
  cp "$fixed"/*.go "$fixed"/*.s "$vend/"
fi

# A generator that failed once leaves empty files behind that break every later make.
if [ -d _output/bin ] && find _output/bin -type f -empty | grep -q .; then
  rm -rf _output
fi

export HOME="${HOME:-/root}" CGO_ENABLED=0 GOFLAGS=-mod=vendor
export GOCACHE="$TRIBUTARY_CACHE/go-build"
step "building ${BINARIES[*]} (cold: about 6-10 min on 2 cores)"
whats=""
for b in "${BINARIES[@]}"; do whats="$whats cmd/$b"; done
log="$TRIBUTARY_CACHE/kubernetes-build.log"
if ! make WHAT="${whats# }" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "Kubernetes build failed; full log in $log"
fi

step "building the pause binary"
mkdir -p "$K8S_BIN"
gcc -Os -static -o "$K8S_BIN/pause" build/pause/linux/pause.c \
  -DVERSION="3.2-tributary"

for b in "${BINARIES[@]}"; do
  install -m 0755 "_output/bin/$b" "$K8S_BIN/$b" 2>/dev/null ||
    install -m 0755 "$(find _output -type f -name "$b" -perm -u+x | head -n1)" "$K8S_BIN/$b"
done
all_built || die "build finished but binaries are missing from $K8S_BIN"
step "Kubernetes $K8S_VERSION binaries built into $K8S_BIN"
