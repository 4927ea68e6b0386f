# Shared by the main command (hack/demo.sh) and the e2e suites (tests/e2e/*.sh): verdicts,
# the operator installed with the Helm chart, an example applied, a running pipeline watched.
# Expects tests/cluster/lib.sh sourced, KUBECONFIG exported and kubectl on PATH.

# The suites' verdicts: `check NAME COMMAND...` counts and prints one, `finish` prints the
# totals ("N passed, N failed") and fails when any check failed.
passed=0
failed=0
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
  fi
}
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# The operator's Helm release and namespace.
OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-tributary-system}"
OPERATOR_RELEASE="${OPERATOR_RELEASE:-tributary}"

# install_operator: installs (or upgrades) the chart, watching every namespace, and waits
# for the operator pod.
install_operator() {
  local repo=$1
  # Helm installs a chart's CRDs only once and never upgrades them: apply the current ones.
  kubectl apply --server-side --force-conflicts --field-manager=tributary-install \
    -f "$repo/crds/" >/dev/null
  helm upgrade --install "$OPERATOR_RELEASE" "$repo/charts/tributary" \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace --wait --timeout 300s >/dev/null
  kubectl -n "$OPERATOR_NAMESPACE" rollout status "deployment/$OPERATOR_RELEASE" --timeout=180s >/dev/null
}

# wait_until SECONDS COMMAND...: polls COMMAND every 2 s until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}

# ready NAMESPACE KIND/NAME: the resource's Ready condition is True.
ready() {
  [ "$(kubectl -n "$1" get "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# wait_ready NAMESPACE SECONDS KIND/NAME...: waits for each resource's Ready condition and
# says which one did not get there (with its condition message).
wait_ready() {
  local ns=$1 seconds=$2 resource
  shift 2
  for resource in "$@"; do
    if ! wait_until "$seconds" ready "$ns" "$resource"; then
      echo "$ns/$resource not Ready after ${seconds}s: $(kubectl -n "$ns" get "$resource" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}' 2>&1)" >&2
      return 1
    fi
  done
}

# service_ip NAMESPACE SERVICE
service_ip() {
  kubectl -n "$1" get service "$2" -o jsonpath='{.spec.clusterIP}'
}

# factory_sql SQL: runs SQL in the factory example's PostgreSQL, prints unaligned rows.
factory_sql() {
  kubectl -n factory exec postgres-0 -c postgres -- \
    env PGPASSWORD=factory-demo-db-password \
    psql -h 127.0.0.1 -U tributary -d factory -v ON_ERROR_STOP=1 -Atc "$1"
}

# factory_redis ARGS...: runs redis-cli in the factory example's Redis.
factory_redis() {
  kubectl -n factory exec deploy/redis -c redis -- \
    redis-cli -a factory-demo-redis-password --no-auth-warning "$@"
}

# factory_rows: readings stored so far (0 while the database is not up).
factory_rows() {
  factory_sql "SELECT count(*) FROM readings" 2>/dev/null || echo 0
}

# jsonpath NAMESPACE RESOURCE PATH [DEFAULT]
jsonpath() {
  local value
  value=$(kubectl -n "$1" get "$2" -o jsonpath="{$3}" 2>/dev/null || true)
  echo "${value:-${4:-}}"
}

# pipeline_line: one line on the factory pipeline's state.
pipeline_line() {
  local gateways backlog workers rows
  gateways=$(jsonpath factory gateway/sensors .status.readyReplicas 0)
  backlog=$(jsonpath factory worker/readings .status.scaling.backlog 0)
  workers=$(jsonpath factory worker/readings .status.replicas 0)
  rows=$(factory_rows)
  echo "gateway pods ${gateways} · queue depth ${backlog} · worker replicas ${workers} · rows stored ${rows}"
}

# devices_progress NAMESPACE DEVICE...: "S R N": how many of the Devices have their
# generated `<device>-credentials` Secret (S) and are Ready (R), of N. Reads names and
# conditions only, never a Secret's data.
devices_progress() {
  local ns=$1 secrets ready
  shift
  secrets=$(kubectl -n "$ns" get secrets -o name 2>/dev/null | sed 's|^secret/||; s|-credentials$||' |
    grep -cxF -f <(printf '%s\n' "$@") || true)
  ready=$(kubectl -n "$ns" get devices.tributary.dev \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    awk '$2 == "True" { print $1 }' | grep -cxF -f <(printf '%s\n' "$@") || true)
  echo "${secrets:-0} ${ready:-0} $#"
}

# wait_devices NAMESPACE SECONDS DEVICE...: waits until every DEVICE has its generated
# credentials Secret and is Ready (its Gateways know it), with a progress line every few
# seconds; says how far it got when the deadline passes.
wait_devices() {
  local ns=$1 seconds=$2 secrets ready total
  shift 2
  local deadline=$((SECONDS + seconds))
  while true; do
    read -r secrets ready total < <(devices_progress "$ns" "$@")
    echo "  devices in $ns: credential Secrets $secrets/$total · Ready $ready/$total"
    [ "$secrets" -ge "$total" ] && [ "$ready" -ge "$total" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "devices in $ns after ${seconds}s: $secrets/$total credential Secrets, $ready/$total Ready" >&2
      return 1
    fi
    sleep 3
  done
}

# device_password NAMESPACE DEVICE: prints the password the operator generated for DEVICE
# (for a variable or a file, never for a log).
device_password() {
  kubectl -n "$1" get secret "$2-credentials" -o jsonpath='{.data.password}' | base64 -d
}

# credentials_dir NAMESPACE DIR DEVICE...: writes DIR/DEVICE/password (owner-only) from each
# DEVICE's credentials Secret: the layout `tributary-simulator --credentials-dir` reads.
credentials_dir() {
  local ns=$1 dir=$2 device
  shift 2
  (
    umask 077
    mkdir -p "$dir"
    for device in "$@"; do
      mkdir -p "$dir/$device"
      if ! device_password "$ns" "$device" >"$dir/$device/password" || [ ! -s "$dir/$device/password" ]; then
        echo "$ns/$device: no password in Secret $device-credentials" >&2
        exit 1
      fi
    done
  )
}

# wait_table NAMESPACE GATEWAY DEVICES SECONDS: waits until every running pod of the
# Gateway holds its device table and the table lists DEVICES devices (the Gateway's
# `status.deviceTable`, written by the operator once it checked with the pods), with a
# progress line every few seconds.
wait_table() {
  local ns=$1 gateway=$2 want=$3 seconds=$4 state
  local deadline=$((SECONDS + seconds))
  while true; do
    state=$(kubectl -n "$ns" get gateway "$gateway" \
      -o jsonpath='{.status.deviceTable.devices} {.status.deviceTable.podsCurrent} {.status.deviceTable.pods}' 2>/dev/null || true)
    read -r devices current pods <<<"$state"
    echo "  gateway $ns/$gateway: table of ${devices:-?} devices, held by ${current:-?}/${pods:-?} pods"
    if [ "${devices:-}" = "$want" ] && [ "${pods:-0}" -gt 0 ] && [ "${current:-}" = "${pods:-}" ]; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "gateway $ns/$gateway after ${seconds}s: table of ${devices:-?} devices (want $want), ${current:-?}/${pods:-?} pods hold it" >&2
      return 1
    fi
    sleep 2
  done
}
