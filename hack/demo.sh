#!/usr/bin/env bash
# The main job, on a fresh Debian machine as root: a local Kubernetes cluster, the
# project's images built and loaded, and a workload running on it. The cluster stays up;
# `bash tests/cluster/cluster.sh down` removes it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../tests/cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
require_root
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"

bash "$repo/tests/cluster/cluster.sh" up
bash "$repo/tests/images/build-and-load.sh"
step "applying examples/hello"
kubectl_ apply -f "$repo/examples/hello/hello.yaml" >/dev/null
kubectl_ -n tributary-hello rollout status deployment/hello --timeout=180s >/dev/null
ip=$(kubectl_ -n tributary-hello get service hello -o jsonpath='{.spec.clusterIP}')
answer=$(curl -fsS --max-time 10 "http://$ip/healthz")
step "hello Service at $ip answered: $answer"
kubectl_ -n tributary-hello get deployments,pods,services -o wide
cat <<MSG

The cluster is running. Try:
  export KUBECONFIG=$KUBECONFIG_PATH PATH=$K8S_BIN:\$PATH
  kubectl get nodes,pods -A
Stop it and remove everything it created:
  bash tests/cluster/cluster.sh down
MSG
