#!/usr/bin/env bash
# Monitoring against a real Prometheus: every series docs/metrics.md documents for the
# gateway and the worker is scraped from real processes, the operator's alert rules pass
# `promtool check rules`, load and evaluate in Prometheus and fire on real metrics, and
# every Grafana dashboard query is valid PromQL.
#
#   tests/monitoring/prometheus.sh
#
# Needs: the test servers (started here through tests/services/{rabbitmq,postgres,redis}.sh),
# mosquitto_pub (tests/services/install-clients.sh), Debian's `prometheus` package (installed
# here if absent; its service is never started — we run our own process on loopback with a
# temporary config and storage, and stop it by PID), cargo, curl and jq.
# Builds the gateway, worker and operator (debug) into CARGO_TARGET_DIR (default target/).
# Prints PASS/FAIL lines and "N passed, M failed"; exits non-zero on any failure. A server
# that cannot start is a failure with the reason, never a skip. No timing assertions: every
# wait is on a condition with a deadline.
set -euo pipefail
# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/apt.sh"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEADLINE="${TRIBUTARY_MONITORING_DEADLINE:-120}"
passed=0
failed=0
pids=()

pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
die() {
    failed=$((failed + 1))
    echo "FAIL $*"
    echo "$passed passed, $failed failed"
    exit 1
}
log() { echo "prometheus.sh: $*" >&2; }

# Waits until COMMAND succeeds or DEADLINE seconds pass.
wait_for() {
    local deadline=$((SECONDS + DEADLINE))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---- tools and servers ----
command -v cargo >/dev/null || die "cargo not found"
for tool in curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install $tool)"
done
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    log "installing Debian's prometheus package (its service is not used)"
    apt-get update -qq || die "apt-get update failed"
    apt_install --no-install-recommends prometheus || die "cannot install the prometheus package"
    # The install enables (and, where services may start, starts) the package's unit; we
    # never use it: undo that right after our own install.
    if command -v systemctl >/dev/null; then
        systemctl disable prometheus.service >/dev/null 2>&1 || true
        systemctl stop prometheus.service >/dev/null 2>&1 || true
    fi
fi
bash "$REPO/tests/services/install-clients.sh" || die "cannot install mosquitto-clients"
for service in rabbitmq postgres redis; do
    bash "$REPO/tests/services/$service.sh" start >&2 ||
        die "the $service test server cannot start (tests/services/$service.sh start)"
    eval "$(bash "$REPO/tests/services/$service.sh" env)"
done
: "${TRIBUTARY_TEST_AMQP_URL:?}" "${TRIBUTARY_TEST_RABBITMQ_API:?}" \
    "${TRIBUTARY_TEST_POSTGRES_URL:?}" "${TRIBUTARY_TEST_REDIS_URL:?}"

log "building the gateway, worker and operator"
(cd "$REPO" && cargo build -q -p tributary-gateway -p tributary-worker -p tributary-operator --bins) ||
    die "cargo build failed"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug"

# ---- scratch space and cleanup ----
WORK="$(mktemp -d /tmp/tributary-monitoring.XXXXXX)"
RUN="mon$(date +%s)$$"
Q_OK="$RUN.telemetry"
Q_FAIL="$RUN.broken"
TABLE="${RUN}_readings"
rabbit_api() { # METHOD PATH [curl args...]
    local method=$1 path=$2
    shift 2
    curl -sf -u "$TRIBUTARY_TEST_RABBITMQ_API_USER:$TRIBUTARY_TEST_RABBITMQ_API_PASSWORD" \
        -X "$method" "$TRIBUTARY_TEST_RABBITMQ_API$path" "$@"
}
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for queue in "$Q_OK" "$Q_OK.dlq" "$Q_FAIL" "$Q_FAIL.dlq"; do
        rabbit_api DELETE "/api/queues/%2F/$queue" >/dev/null 2>&1 || true
    done
    local psql
    psql="$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -1)"
    if [ -n "$psql" ]; then
        "$psql" "$TRIBUTARY_TEST_POSTGRES_URL" -qc "DROP TABLE IF EXISTS \"$TABLE\"" >/dev/null 2>&1 || true
    fi
    if [ "$failed" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "logs kept in $WORK" >&2
    fi
}
trap cleanup EXIT

start() { # NAME COMMAND... — runs in the background, logging to $WORK/NAME.log
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    pids+=("$!")
}

http_ok() { curl -sf -o /dev/null "$1"; }

# ---- the data plane ----
GW_HEALTH=$(free_port)
GW_MQTT=$(free_port)
GW_HTTP=$(free_port)
W_OK=$(free_port)
W_FAIL=$(free_port)
CLOSED=$(free_port) # nothing listens here: the failing worker's webhook
PROM=$(free_port)

printf '%s' "$TRIBUTARY_TEST_AMQP_URL" >"$WORK/amqp"
printf '%s' "$TRIBUTARY_TEST_POSTGRES_URL" >"$WORK/postgres"
printf '%s' "$TRIBUTARY_TEST_REDIS_URL" >"$WORK/redis"
printf 'hook-secret' >"$WORK/hook"
hash="$(printf 'd1-secret' | "$BIN/tributary-gateway" hash-password)" || die "hash-password failed"
printf 'd1:%s\n' "$hash" >"$WORK/passwords"

cat >"$WORK/worker-ok.yaml" <<EOF
queue: {uriFile: $WORK/amqp, name: "$Q_OK", declare: true, prefetch: 100, concurrency: 2}
deadLetter: {routingKey: "$Q_OK.dlq"}
processing:
  pipeline:
    steps:
      - filter: "has(payload.temp)"
sinks:
  - postgres:
      name: readings
      urlFile: $WORK/postgres
      table: "$TABLE"
      createTable: true
      columns: [{name: device, expr: device}]
      batch: {maxMessages: 10, maxBytes: 100000, maxAgeMs: 20}
  - redis:
      name: latest
      urlFile: $WORK/redis
      keyTemplate: "$RUN:{device}"
      ttlSeconds: 600
      batch: {maxMessages: 10, maxBytes: 100000, maxAgeMs: 20}
  # Hot readings command the device's fan (d1 never subscribes: counted undeliverable).
  - command:
      name: fan
      tenant: factory
      command: fan/set
      when: "payload.temp > 2"
      payload: "{'speed': 100}"
  # A live copy for an application API (none here: the exchange is missing, counted).
  - live: {name: view, exchange: tributary.live.factory}
http: {listen: "127.0.0.1:$W_OK"}
EOF
cat >"$WORK/worker-failing.yaml" <<EOF
queue: {uriFile: $WORK/amqp, name: "$Q_FAIL", declare: true, prefetch: 100, concurrency: 2}
deadLetter: {routingKey: "$Q_FAIL.dlq"}
retry: {maxAttempts: 2, initialBackoffMs: 10, maxBackoffMs: 20}
processing:
  pipeline:
    steps: [{set: {field: celsius, expr: "payload.temp"}}]
sinks:
  - webhook:
      name: hook
      url: "http://127.0.0.1:$CLOSED/hook"
      secretFile: $WORK/hook
      timeoutMs: 2000
      batch: {maxMessages: 10, maxBytes: 100000, maxAgeMs: 20}
http: {listen: "127.0.0.1:$W_FAIL"}
EOF
# A device registry as the operator renders one (here with an empty table), so that its
# series exist too.
printf '{"issuedAtMs": 1, "devices": []}' | gzip >"$WORK/devices.json.gz"
head -c 32 /dev/urandom >"$WORK/verifier-key"
printf 'monitoring-sync-token' >"$WORK/sync-token"
cat >"$WORK/gateway.yaml" <<EOF
tenant: factory
gateway: line-1
healthListen: "127.0.0.1:$GW_HEALTH"
listeners: {mqtt: "127.0.0.1:$GW_MQTT", http: "127.0.0.1:$GW_HTTP"}
auth:
  passwordFile: $WORK/passwords
  failedLoginsPerMinute: 100000
  registry:
    tableFile: $WORK/devices.json.gz
    verifierKeyFile: $WORK/verifier-key
    syncTokenFile: $WORK/sync-token
permissions: ["devices/{device}/#"]
routes:
  - {topicFilter: "devices/+/telemetry", queue: "$Q_OK"}
  - {topicFilter: "devices/+/broken", queue: "$Q_FAIL"}
broker: {uriFile: $WORK/amqp}
EOF

# Workers first: they declare the queues the gateway publishes to.
start worker-ok "$BIN/tributary-worker" --config "$WORK/worker-ok.yaml"
start worker-failing "$BIN/tributary-worker" --config "$WORK/worker-failing.yaml"
wait_for http_ok "http://127.0.0.1:$W_OK/readyz" ||
    die "the worker did not become ready (log: $(tail -5 "$WORK/worker-ok.log"))"
wait_for http_ok "http://127.0.0.1:$W_FAIL/readyz" ||
    die "the failing-sink worker did not become ready (log: $(tail -5 "$WORK/worker-failing.log"))"
start gateway "$BIN/tributary-gateway" --config "$WORK/gateway.yaml"
wait_for http_ok "http://127.0.0.1:$GW_HEALTH/readyz" ||
    die "the gateway did not become ready (log: $(tail -5 "$WORK/gateway.log"))"

# ---- alert rules: promtool, then loaded into Prometheus ----
FIXTURES="$REPO/operator/tests/fixtures"
rule_inputs=()
for fixture in "$FIXTURES"/queue-*.yaml "$FIXTURES"/gateway.yaml; do
    name="$(basename "$fixture")"
    if "$BIN/tributary-operator" rules --namespace factory "$fixture" >"$WORK/rules-$name" 2>"$WORK/rules-$name.err" &&
        promtool check rules "$WORK/rules-$name" >"$WORK/promtool-$name.log" 2>&1; then
        pass "promtool check rules: tributary-operator rules $name"
        rule_inputs+=("$fixture")
    else
        fail "promtool check rules: tributary-operator rules $name"
        cat "$WORK/rules-$name.err" "$WORK/promtool-$name.log" 2>/dev/null || true
    fi
done
"$BIN/tributary-operator" rules --namespace factory "${rule_inputs[@]}" >"$WORK/rules.yaml" ||
    die "tributary-operator rules failed"

# The scrape labels stand in for what the operator's PodMonitors add (docs/metrics.md).
cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$WORK/rules.yaml"]
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: ["127.0.0.1:$GW_HEALTH"]
        labels: {namespace: factory, gateway: line-1}
  - job_name: worker
    static_configs:
      - targets: ["127.0.0.1:$W_OK"]
        labels: {namespace: factory, queue: telemetry, worker: ingest}
      - targets: ["127.0.0.1:$W_FAIL"]
        labels: {namespace: factory, queue: telemetry, worker: failing}
EOF
promtool check config "$WORK/prometheus.yml" >"$WORK/promtool-config.log" 2>&1 ||
    die "promtool check config: $(cat "$WORK/promtool-config.log")"
start prometheus prometheus --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$WORK/prometheus-data" --web.listen-address="127.0.0.1:$PROM"
PROM_URL="http://127.0.0.1:$PROM"
wait_for http_ok "$PROM_URL/-/ready" ||
    die "Prometheus did not start (log: $(tail -5 "$WORK/prometheus.log"))"

# Instant query; prints the result vector.
query() { curl -sf "$PROM_URL/api/v1/query" --data-urlencode "query=$1" | jq -c '.data.result'; }
has_series() { [ "$(query "$1" | jq 'length')" -gt 0 ]; }
targets_up() { [ "$(query 'count(up == 1)' | jq -r '.[0].value[1] // 0')" = 3 ]; }
wait_for targets_up || fail "Prometheus scrapes the gateway and both workers (up == 1)"

# ---- traffic ----
publish() { # TOPIC PAYLOAD [mosquitto_pub args...]
    local topic=$1 payload=$2
    shift 2
    mosquitto_pub -h 127.0.0.1 -p "$GW_MQTT" -V mqttv311 -q 1 -i "mon-$RANDOM" \
        -t "$topic" -m "$payload" "$@"
}
post() { # TOPIC PAYLOAD [curl args...] — prints the HTTP status
    local topic=$1 payload=$2
    shift 2
    curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        --data "$payload" "http://127.0.0.1:$GW_HTTP/v1/publish/$topic" "$@"
}
round() { # messages through both workers, a refused topic, failed logins
    for i in 1 2 3; do
        publish devices/d1/telemetry "{\"temp\": $i}" -u d1 -P d1-secret || fail "mosquitto_pub accepted"
    done
    publish devices/d1/telemetry '{"note": "no temp: filtered"}' -u d1 -P d1-secret || true
    publish devices/d1/broken '{"temp": 1}' -u d1 -P d1-secret || fail "mosquitto_pub to the failing worker"
    publish devices/d1/broken '{"note": "no temp: the step fails"}' -u d1 -P d1-secret || fail "mosquitto_pub of a poison message"
    [ "$(post devices/d1/telemetry '{"temp": 9}' -u d1:d1-secret)" = 202 ] || fail "HTTP publish accepted"
    post other/topic '{"temp": 1}' -u d1:d1-secret >/dev/null # not permitted
    publish devices/d1/telemetry '{"temp": 1}' -u d1 -P wrong-password >/dev/null 2>&1 || true
    post devices/d1/telemetry '{"temp": 1}' >/dev/null # no credentials
}
round
# Counters only show an increase once Prometheus has seen them before: wait for the
# labelled series, then go again (with a burst of failed logins for the alert).
wait_for has_series 'tributary_gateway_auth_failures_total{method="none"}' || true
wait_for has_series 'tributary_worker_messages_dead_lettered_total' || true
round
for _ in $(seq 1 30); do post devices/d1/telemetry '{}' >/dev/null; done

# ---- every documented series is scraped ----
documented() { # SECTION — "name type" lines of docs/metrics.md's table under "## SECTION"
    awk -v section="## $1" '
        /^## / { inside = ($0 == section); next }
        inside && /^\| `tributary_/ {
            split($0, cells, "|"); name = cells[2]; kind = cells[3]
            gsub(/[ `]/, "", name); gsub(/ /, "", kind); print name, kind
        }' "$REPO/docs/metrics.md"
}
for section in Gateway Worker; do
    lines="$(documented "$section")"
    [ -n "$lines" ] || fail "docs/metrics.md documents $section metrics"
    while read -r name kind; do
        series="$name"
        [ "$kind" = histogram ] && series="${name}_count"
        if wait_for has_series "$series"; then
            pass "$section series $series is scraped ($(query "$series" | jq -r 'map(.metric | del(.__name__, .instance, .job, .namespace) | tostring) | join(" ")'))"
        else
            fail "$section series $series is not scraped (documented in docs/metrics.md)"
        fi
    done <<<"$lines"
done

# ---- rules evaluate without error, and fire on the real metrics ----
rules_evaluated() {
    curl -sf "$PROM_URL/api/v1/rules" | jq -e '
        [.data.groups[].rules[]] | length > 0 and all(.lastEvaluation != "0001-01-01T00:00:00Z")' >/dev/null
}
if wait_for rules_evaluated; then
    errors="$(curl -sf "$PROM_URL/api/v1/rules" | jq -r '.data.groups[].rules[] | select(.health != "ok") | "\(.name): \(.lastError)"')"
    count="$(curl -sf "$PROM_URL/api/v1/rules" | jq '[.data.groups[].rules[]] | length')"
    if [ -z "$errors" ]; then pass "all $count alert rules evaluate in Prometheus"; else fail "rules with errors: $errors"; fi
else
    fail "Prometheus evaluated the alert rules"
fi
firing() { # ALERTNAME JQ-FILTER-ON-LABELS
    curl -sf "$PROM_URL/api/v1/alerts" |
        jq -e --arg name "$1" "[.data.alerts[] | select(.labels.alertname == \$name and .state == \"firing\") | select(.labels | $2)] | length > 0" >/dev/null
}
if wait_for firing TributaryQueueMessagesDeadLettered '.worker == "failing" and .reason == "pipeline"'; then
    pass "TributaryQueueMessagesDeadLettered fires for the worker that dead-letters a poison message"
else
    fail "TributaryQueueMessagesDeadLettered fires for the worker that dead-letters a poison message"
fi
# A down sink is an outage, not a reason to dead-letter: the alert is pending (for: 1m) or firing.
sink_alert() {
    curl -sf "$PROM_URL/api/v1/alerts" | jq -e '[.data.alerts[] | select(.labels.alertname == "TributaryQueueSinkUnavailable"
        and .labels.worker == "failing" and .labels.target == "sink hook")] | length > 0' >/dev/null
}
if wait_for sink_alert; then
    pass "TributaryQueueSinkUnavailable is raised for the worker whose sink is down"
else
    fail "TributaryQueueSinkUnavailable is raised for the worker whose sink is down"
fi
if wait_for firing TributaryGatewayAuthFailureBurst '.gateway == "line-1" and .method == "none"'; then
    pass "TributaryGatewayAuthFailureBurst fires after a burst of failed logins"
else
    fail "TributaryGatewayAuthFailureBurst fires after a burst of failed logins"
fi
if firing TributaryQueueMessagesDeadLettered '.worker == "ingest"'; then
    fail "TributaryQueueMessagesDeadLettered must not fire for the healthy worker"
else
    pass "no dead-letter alert for the healthy worker"
fi

# ---- every dashboard query is valid PromQL ----
for board in "$REPO"/charts/tributary/dashboards/*.json; do
    bad=""
    while IFS= read -r expr; do
        concrete="$(printf '%s' "$expr" | sed -e 's/\$__rate_interval/1m/g' \
            -e 's/\$namespace/.*/g; s/\$gateway/.*/g; s/\$worker/.*/g; s/\$queue/.*/g')"
        status="$(curl -s "$PROM_URL/api/v1/query" --data-urlencode "query=$concrete" | jq -r '.status')"
        [ "$status" = success ] || bad="$bad
    $expr"
    done < <(jq -r '.panels[] | select(.targets) | .targets[].expr' "$board")
    if [ -z "$bad" ]; then pass "dashboard $(basename "$board"): every query is valid PromQL"; else fail "dashboard $(basename "$board"): invalid queries:$bad"; fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
