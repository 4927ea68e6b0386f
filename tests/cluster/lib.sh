# Shared settings and helpers for the local-cluster scripts. Sourced, never run.
# shellcheck shell=bash

set -euo pipefail

# Where everything lives. The cache survives clones (keyed by version); the state
# directory belongs to one running cluster and is removed by `down`.
TRIBUTARY_CACHE="${TRIBUTARY_CACHE:-/var/cache/tributary}"
CLUSTER_STATE="${CLUSTER_STATE:-/var/lib/tributary-cluster}"
KUBECONFIG_PATH="${KUBECONFIG_PATH:-$CLUSTER_STATE/admin.kubeconfig}"

# Network layout. The node's host-only address lives on a bridge we create; pods get
# addresses on a second bridge managed by the CNI bridge plugin. Nothing is routed
# off the machine (no masquerading, no default route changes).
NODE_BRIDGE="trib-node0"
NODE_IP="10.213.0.1"
NODE_CIDR="10.213.0.1/24"
POD_BRIDGE="trib-cni0"
POD_CIDR="10.214.0.0/16"
SERVICE_CIDR="10.215.0.0/16"
API_SERVICE_IP="10.215.0.1"
DNS_SERVICE_IP="10.215.0.10"
CLUSTER_DOMAIN="cluster.local"
NODE_NAME="tributary-node"
API_PORT=6443

K8S_VERSION="1.20.2"
PAUSE_IMAGE="k8s.gcr.io/pause:3.2"
K8S_BIN="$TRIBUTARY_CACHE/kubernetes-$K8S_VERSION/bin"

export STARTED_AT="${STARTED_AT:-$(date +%s)}"

# One progress line per step, with the time elapsed since the command started.
step() {
  local now
  now=$(date +%s)
  printf '[%4ss] %s\n' "$((now - STARTED_AT))" "$*"
}

die() {
  echo "error: $*" >&2
  exit 1
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts a node)"
}

# Waits until a command succeeds, at most $1 seconds; prints what it waited for on timeout.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${timeout}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

pid_alive() {
  local pidfile=$1
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

kubectl_() {
  "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"
}
