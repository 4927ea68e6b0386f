# Shared by the operator benchmarks that run their own operator on the host against the
# local cluster (bench-devices.sh, bench-scale.sh); sourced, not run. Sets up the cluster's
# kubectl, the release build's target and the "bench" RabbitMQ instance's variables, and
# pauses the operators installed in the cluster while the benchmark's own one runs.
# shellcheck shell=bash
: "${repo:?set repo (the repository root) before sourcing bench-lib.sh}"
# shellcheck source=../tests/cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}" PATH="$K8S_BIN:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
export TRIBUTARY_RABBITMQ_INSTANCE="${TRIBUTARY_RABBITMQ_INSTANCE:-bench}"
export TRIBUTARY_RABBITMQ_PORT="${TRIBUTARY_RABBITMQ_PORT:-5794}"
export TRIBUTARY_RABBITMQ_MGMT_PORT="${TRIBUTARY_RABBITMQ_MGMT_PORT:-15794}"
export TRIBUTARY_RABBITMQ_MQTT_PORT="${TRIBUTARY_RABBITMQ_MQTT_PORT:-1994}"

# The operators installed in the cluster, as "namespace/name/replicas", once paused.
paused_operators=()

# pause_installed_operators: operators installed in the cluster (the demo's, a test run's
# Helm release) act on every namespace and would fight the one measured: scaled to 0 until
# restore_paused_operators, and waited for until their pods are gone.
pause_installed_operators() {
  local pns pname preplicas
  while read -r pns pname preplicas; do
    [ -n "$pname" ] || continue
    paused_operators+=("$pns/$pname/${preplicas:-1}")
    say "pausing the installed operator $pns/$pname during the benchmark"
    kubectl -n "$pns" scale deployment "$pname" --replicas=0 >/dev/null
  done < <(kubectl get deployments --all-namespaces -l app.kubernetes.io/name=tributary-operator \
    -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name} {.spec.replicas}{"\n"}{end}')
  until [ -z "$(kubectl get pods --all-namespaces -l app.kubernetes.io/name=tributary-operator -o name 2>/dev/null)" ]; do
    sleep 2
  done
}

# restore_paused_operators: the paused operators back at their replicas.
restore_paused_operators() {
  local entry pns pname preplicas
  for entry in "${paused_operators[@]}"; do
    IFS=/ read -r pns pname preplicas <<<"$entry"
    kubectl -n "$pns" scale deployment "$pname" --replicas="$preplicas" >/dev/null 2>&1 || true
  done
}
