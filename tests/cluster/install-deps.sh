#!/usr/bin/env bash
# Installs, from Debian's packages, everything the local cluster, the image builds and the
# integration tests need. Safe to run again: it installs only what is missing.
set -euo pipefail
# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/apt.sh"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
require_root

PACKAGES=(
  # Building Kubernetes 1.20 from Debian's source package.
  golang-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev
  # The node.
  etcd-server containerd runc containernetworking-plugins iptables nftables conntrack
  dnsmasq-base socat ethtool iproute2 util-linux mount kmod openssl procps
  # Images without a registry.
  buildah debootstrap
  # Scripts and tests.
  curl jq ca-certificates
  # The dashboard rendered in a real browser (tests/dashboard).
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt_install --no-install-recommends "${missing[@]}"
fi

# Debian starts services from some of these packages; the cluster runs its own
# instances with its own configuration, so stop and disable the packaged ones.
for svc in etcd containerd; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
step "Debian packages present"
