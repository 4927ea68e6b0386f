#!/usr/bin/env bash
# The local Kubernetes cluster for Tributary's tests and demo.
#
#   cluster.sh up          start (or keep) a single-node cluster; prints the kubeconfig path
#   cluster.sh down        stop it and remove everything it created
#   cluster.sh status      exit 0 when it is running and the node is Ready
#   cluster.sh kubeconfig  print the kubeconfig path
#   cluster.sh load FILE.. import image archives (docker-archive) into the node
#
# On a machine with `kind` and a working Docker engine (and TRIBUTARY_CLUSTER=kind or no
# other choice), the same interface runs a kind cluster instead. Default here: a real node
# built from Debian's packages (see ../../README.md).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

backend="${TRIBUTARY_CLUSTER:-}"
if [ -z "$backend" ]; then
  if command -v kind >/dev/null && docker info >/dev/null 2>&1; then
    backend=kind
  else
    backend=local
  fi
fi

if [ "$backend" = kind ]; then
  # shellcheck source=kind.sh
  source "$HERE/kind.sh"
  kind_main "$@"
  exit $?
fi

# shellcheck source=certs.sh
source "$HERE/certs.sh"
# shellcheck source=up.sh
source "$HERE/up.sh"
# shellcheck source=down.sh
source "$HERE/down.sh"

cluster_running() {
  [ -f "$CLUSTER_STATE/up" ] && pid_alive "$PIDS/kube-apiserver.pid" &&
    pid_alive "$PIDS/kubelet.pid" && pid_alive "$PIDS/containerd.pid" &&
    pid_alive "$PIDS/etcd.pid" && pid_alive "$PIDS/dnsmasq.pid" && node_ready
}

load_images() {
  cluster_running || die "cluster is not running: run '$0 up' first"
  local f
  for f in "$@"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$f" >/dev/null
  done
}

case "${1:-}" in
  up) cluster_up ;;
  down) cluster_down ;;
  status)
    if cluster_running; then
      echo "running (kubeconfig: $KUBECONFIG_PATH)"
    else
      echo "not running"
      exit 1
    fi
    ;;
  kubeconfig) echo "$KUBECONFIG_PATH" ;;
  load)
    shift
    load_images "$@"
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
