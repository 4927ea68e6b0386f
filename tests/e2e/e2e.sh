#!/usr/bin/env bash
# The end-to-end suite on the running cluster: the operator installed with the Helm chart,
# examples/factory-telemetry applied, its 50 Device resources given generated credentials,
# N messages (default 10,000) published by the 50 simulated devices with those credentials
# through the gateway Service, then exactly N distinct rows in PostgreSQL, the last
# reading of every device in Redis, nothing dead-lettered; the factory dashboard in headless
# Chromium shows its devices and a live chart whose values change; examples/multi-tenant refuses a
# cross-tenant publish; deleting the examples' resources removes everything the operator
# made. Needs KUBECONFIG, kubectl and helm on PATH, the images loaded into the node
# (tests/images/build-and-load.sh) and mosquitto_pub (tests/services/install-clients.sh).
# Fails, never skips, when something it needs is missing. Ends with "N passed, N failed".
#
# It uses the examples' namespaces (factory, tenant-a, tenant-b): a demo pipeline running
# there is replaced and removed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
# shellcheck source=lib.sh
source "$repo/tests/e2e/lib.sh"
: "${KUBECONFIG:?KUBECONFIG must point at the test cluster (tests/cluster/cluster.sh up)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
N="${TRIBUTARY_E2E_MESSAGES:-10000}"
DEVICES=50
PER_DEVICE=$((N / DEVICES))
[ $((PER_DEVICE * DEVICES)) -eq "$N" ] || { echo "TRIBUTARY_E2E_MESSAGES must be a multiple of $DEVICES" >&2; exit 2; }

work=$(mktemp -d)
sampler_pid=
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

kubectl version >/dev/null 2>&1 || { echo "the test cluster is not reachable" >&2; failed=1; finish; }
command -v mosquitto_pub >/dev/null || { echo "mosquitto_pub missing: run tests/services/install-clients.sh" >&2; failed=1; finish; }
step "building the device simulator (release)"
cargo build --release --locked -q -p tributary-simulator
simulator="$CARGO_TARGET_DIR/release/tributary-simulator"

# A clean start: earlier runs' namespaces gone.
for ns in factory tenant-a tenant-b; do
  kubectl delete namespace "$ns" --ignore-not-found --wait=true --timeout=180s >/dev/null
done

step "installing the operator with the Helm chart"
check operator-installed-with-helm install_operator "$repo"

step "applying examples/factory-telemetry"
kubectl apply -k "$repo/examples/factory-telemetry" >/dev/null
check factory-resources-ready wait_ready factory 300 queue/telemetry sink/readings-db \
  sink/latest-readings sink/live-readings gateway/sensors worker/readings applicationapi/factory
databases_ready() { kubectl -n factory rollout status statefulset/postgres --timeout=180s >/dev/null; }
check factory-databases-ready databases_ready
columns_shown() {
  local out
  out=$(kubectl -n factory get queues,gateways,workers,sinks)
  grep -q 'MESSAGES' <<<"$out" && grep -q 'DELIVERY' <<<"$out" && grep -q 'BACKLOG' <<<"$out" &&
    grep -q 'REASON' <<<"$out" && grep -q 'sensors-gateway.factory.svc' <<<"$out"
}
check kubectl-get-shows-columns columns_shown
explained() {
  kubectl explain gateway.spec | grep -q 'publishTopics' &&
    kubectl explain worker.spec.scaling.minReplicas | grep -q 'Fewest replicas'
}
# The API server republishes a changed CRD's OpenAPI schema asynchronously (its aggregator
# re-reads the CRD schemas about once a minute), so explain may lag the CRD apply above.
explained_eventually() {
  wait_until 150 explained && return 0
  step "kubectl explain still lacks the field docs after 150 s:"
  kubectl explain worker.spec.scaling.minReplicas 2>&1 | head -20
  return 1
}
check kubectl-explain-shows-field-docs explained_eventually
two_gateways() { [ "$(jsonpath factory gateway/sensors .status.readyReplicas 0)" = 2 ]; }
check gateway-two-replicas-ready wait_until 120 two_gateways

mapfile -t machines < <(seq -f 'machine-%g' 1 "$DEVICES")
step "waiting for the $DEVICES Devices' generated credentials"
check factory-device-credentials-generated wait_devices factory 180 "${machines[@]}"
check factory-gateway-pods-hold-the-table wait_table factory sensors "$DEVICES" 120
# The simulator reads each machine's password from $work/credentials/<machine>/password.
check factory-device-credentials-read credentials_dir factory "$work/credentials" "${machines[@]}"

# Worker replicas seen while the messages flow (the autoscaler's work), sampled each second.
(
  while true; do
    jsonpath factory worker/readings .status.replicas 0 >>"$work/replicas"
    sleep 1
  done
) &
sampler_pid=$!

ip=$(service_ip factory sensors-gateway)
step "publishing $N messages from $DEVICES devices through the gateway Service $ip:1883"
publish() {
  "$simulator" --host "$ip" --port 1883 --credentials-dir "$work/credentials" \
    --devices "$DEVICES" --messages "$N" --username-template 'machine-{n}' \
    --topic 'factory/line-1/{device}/telemetry' --json >"$work/summary.json"
}
check simulator-every-message-acknowledged publish
acknowledged=$(jq -r '.acknowledged' "$work/summary.json" 2>/dev/null || echo 0)
step "simulator: $(cat "$work/summary.json" 2>/dev/null)"
check simulator-acknowledged-equals-n test "$acknowledged" = "$N"

rows_reach_n() { [ "$(factory_rows)" -ge "$N" ]; }
check rows-reach-n wait_until 300 rows_reach_n
sleep 5 # anything extra (a duplicate) would show now
rows=$(factory_rows)
distinct=$(factory_sql "SELECT count(DISTINCT (machine, seq)) FROM readings" || echo 0)
step "PostgreSQL: $rows rows, $distinct distinct (machine, seq)"
check rows-exactly-n test "$rows" = "$N"
check rows-distinct-n test "$distinct" = "$N"
per_device=$(factory_sql "SELECT count(*) FROM (SELECT machine FROM readings GROUP BY machine HAVING count(*) = $PER_DEVICE AND max(seq) = $PER_DEVICE) m" || echo 0)
check rows-every-device-complete test "$per_device" = "$DEVICES"

latest_is_last() {
  local n value
  for n in $(seq 1 "$DEVICES"); do
    value=$(factory_redis GET "factory:latest:machine-$n")
    [ "$(jq -r '.seq' <<<"$value")" = "$PER_DEVICE" ] || { echo "machine-$n: $value" >&2; return 1; }
  done
}
check redis-last-value-of-each-device latest_is_last

drained() {
  [ "$(jsonpath factory worker/readings .status.scaling.backlog x)" = 0 ] &&
    [ -n "$(jsonpath factory queue/telemetry .status.deadLetteredMessages)" ]
}
check queue-drained wait_until 120 drained
dead=$(jsonpath factory queue/telemetry .status.deadLetteredMessages x)
check dead-letter-queue-empty test "$dead" = 0
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=
max_replicas=$(sort -n "$work/replicas" | tail -1)
desired=$(jsonpath factory worker/readings .status.scaling.desiredReplicas)
step "worker replicas during the run: up to ${max_replicas:-?}; autoscaler wants ${desired:-?} now"
check workers-autoscaled test -n "$desired"

# The dashboard in headless Chromium while a few devices keep publishing (after the exact
# counts above, so these readings change nothing they checked). TRIBUTARY_DASHBOARD_SHOT
# keeps the screenshot (docs/dashboard.png was taken the same way, over the demo's pipeline).
step "the factory dashboard in headless Chromium while 10 devices publish"
dashboard_live() {
  local api_ip
  api_ip=$(service_ip factory factory-api)
  kubectl -n factory get secret factory-api-keys -o jsonpath='{.data.dashboard}' | base64 -d >"$work/dashboard-key"
  "$simulator" --host "$ip" --port 1883 --credentials-dir "$work/credentials" \
    --devices 10 --rate 20 --duration-seconds 120 --username-template 'machine-{n}' \
    --topic 'factory/line-1/{device}/telemetry' >"$work/dashboard-simulator.log" 2>&1 &
  local simulator_pid=$! rc=0
  bash "$repo/tests/dashboard/browser.sh" "http://$api_ip:8080" "$work/dashboard-key" \
    "${TRIBUTARY_DASHBOARD_SHOT:-$work/dashboard.png}" || rc=$?
  kill "$simulator_pid" 2>/dev/null || true
  wait "$simulator_pid" 2>/dev/null || true
  return "$rc"
}
check dashboard-live-chart-changes dashboard_live

step "applying examples/multi-tenant"
kubectl apply -k "$repo/examples/multi-tenant" >/dev/null
check tenants-ready wait_ready tenant-a 300 queue/telemetry gateway/devices worker/latest
check tenant-b-ready wait_ready tenant-b 300 queue/telemetry gateway/devices worker/latest
# Both tenants have a Device sensor-1, each with a password of its own.
check tenant-a-devices-ready wait_devices tenant-a 180 sensor-1 sensor-2 sensor-3
check tenant-b-devices-ready wait_devices tenant-b 180 sensor-1 sensor-2 sensor-3
check tenant-a-gateway-holds-the-table wait_table tenant-a devices 3 120
check tenant-b-gateway-holds-the-table wait_table tenant-b devices 3 120
password_a=$(device_password tenant-a sensor-1 || true)
ip_a=$(service_ip tenant-a devices-gateway)
ip_b=$(service_ip tenant-b devices-gateway)
pub() { # IP PASSWORD
  mosquitto_pub -h "$1" -p 1883 -V mqttv311 -q 1 -i sensor-1 -u sensor-1 -P "$2" \
    -t sensors/sensor-1/data -m '{"seq": 1, "value": 21.5}'
}
check tenant-a-device-publishes-to-its-gateway pub "$ip_a" "$password_a"
refused() { ! pub "$ip_b" "$password_a" 2>"$work/refused"; }
check tenant-a-device-refused-by-tenant-b refused
step "cross-tenant publish: $(tr '\n' ' ' <"$work/refused")"

step "deleting the examples' Tributary resources"
made_by_operator() { # NAMESPACE: objects the operator made that still exist, but the
  # managed broker, which the example's Queue (deletionPolicy: Retain) keeps with its
  # messages, and the namespace's device registry keys, kept so that credentials issued
  # to devices stay valid for Devices created again (docs/security.md)
  kubectl -n "$1" get deployments,statefulsets,services,configmaps,secrets,pods \
    -l 'app.kubernetes.io/managed-by=tributary-operator,tributary.dev/owner-kind notin (queue,namespace)' -o name 2>/dev/null
}
# The Devices too (their credential Secrets are the operator's, owned by each Device), and
# the ApplicationApi (its keys Secret, Deployment, Service, ConfigMap and broker user).
for f in api worker gateway sinks queue devices; do
  kubectl delete -f "$repo/examples/factory-telemetry/$f.yaml" --wait=true --timeout=180s >/dev/null
done
nothing_left() { [ -z "$(made_by_operator factory)" ]; }
check factory-children-removed wait_until 180 nothing_left
[ -z "$(made_by_operator factory)" ] || step "left behind: $(made_by_operator factory | tr '\n' ' ')"
broker_retained() {
  [ -n "$(kubectl -n factory get statefulsets -l tributary.dev/owner-kind=queue,tributary.dev/owner=telemetry -o name)" ]
}
check factory-retained-broker-kept broker_retained
user_databases_kept() { kubectl -n factory get statefulset/postgres deployment/redis >/dev/null; }
check factory-user-databases-kept user_databases_kept
kubectl delete -k "$repo/examples/multi-tenant" --wait=true --timeout=300s >/dev/null
kubectl delete -k "$repo/examples/factory-telemetry" --ignore-not-found --wait=true --timeout=300s >/dev/null
gone() { ! kubectl get namespace factory tenant-a tenant-b >/dev/null 2>&1; }
check example-namespaces-removed wait_until 180 gone
finish
