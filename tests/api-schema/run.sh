#!/usr/bin/env bash
# A property-based test of the application API driven by its own OpenAPI document:
# schemathesis (from PyPI, pinned below) generates requests for every operation the document
# describes — valid and invalid ones, and sequences along the document's links — sends them
# to the real `tributary-api` binary, and checks every answer against the document with all
# its checks (no 5xx, only documented status codes, content types and headers, bodies
# matching their schemas, invalid input refused, valid input accepted, the key required).
#
#   tests/api-schema/run.sh
#
# Two servers are tested, one after the other:
#   full     PostgreSQL (a table filled as the worker's PostgreSQL sink fills it), Redis
#            (the Redis Sink's latest values) and RabbitMQ (live messages, commands)
#   minimal  PostgreSQL only: latest values from the table; live and commands answer 503
# The servers are started through tests/services/{postgres,redis,rabbitmq}.sh (their
# TRIBUTARY_* instance and port variables choose which instances). The key has scope all,
# commands allowed and a rate limit high enough that no 429 hides an answer.
# schemathesis.toml beside this script holds the few exceptions, each with its reason.
#
# schemathesis is installed once into a venv under the cache, keyed by its version. The run
# is reproducible: a fixed seed and number of examples per operation
# (TRIBUTARY_API_SCHEMA_SEED, TRIBUTARY_API_SCHEMA_EXAMPLES; the minimal server gets a
# third of them). Ends with "N passed, N failed" (operations of both runs); any failure, a
# server that cannot start, or an operation schemathesis skipped or did not test exits
# non-zero and says why. Logs are kept when it fails.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=tests/lib/apt.sh
source "$REPO/tests/lib/apt.sh"
VERSION=4.32.5
VENV="${TRIBUTARY_CACHE:-/var/cache/tributary}/venv-schemathesis-$VERSION"
SEED="${TRIBUTARY_API_SCHEMA_SEED:-20260105}"
EXAMPLES="${TRIBUTARY_API_SCHEMA_EXAMPLES:-300}"
RUN="apischema$$"
TABLE="${RUN}_readings"
WORK="$(mktemp -d "/tmp/tributary-api-schema.XXXXXX")"
API_PID=""
ok=0

log() { printf '[api-schema] %s\n' "$*" >&2; }
die() {
  echo "FAIL api-schema: $*"
  echo "0 passed, 1 failed"
  exit 1
}

rabbit_api() { # METHOD PATH [CURL ARGS...]: the test broker's management API
  curl -sf -u "$TRIBUTARY_TEST_RABBITMQ_API_USER:$TRIBUTARY_TEST_RABBITMQ_API_PASSWORD" \
    -X "$1" "$TRIBUTARY_TEST_RABBITMQ_API$2" "${@:3}"
}

cleanup() {
  if [ -n "$API_PID" ]; then
    kill -TERM "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
  fi
  if [ -n "${TRIBUTARY_TEST_POSTGRES_URL:-}" ]; then
    psql -q "$TRIBUTARY_TEST_POSTGRES_URL" -c "DROP TABLE IF EXISTS $TABLE" >/dev/null 2>&1 || true
  fi
  if [ -n "${TRIBUTARY_TEST_REDIS_URL:-}" ]; then
    redis-cli -u "$TRIBUTARY_TEST_REDIS_URL" --scan --pattern "$RUN:*" 2>/dev/null |
      xargs -r redis-cli -u "$TRIBUTARY_TEST_REDIS_URL" DEL >/dev/null 2>&1 || true
  fi
  if [ -n "${TRIBUTARY_TEST_RABBITMQ_API:-}" ]; then
    for exchange in "tributary.live.$RUN" "tributary.commands.$RUN"; do
      rabbit_api DELETE "/api/exchanges/%2F/$exchange" >/dev/null 2>&1 || true
    done
    rabbit_api DELETE "/api/queues/%2F/$RUN.pipeline" >/dev/null 2>&1 || true
  fi
  if [ "$ok" = 1 ]; then
    rm -rf "$WORK"
  else
    echo "logs kept in $WORK" >&2
  fi
}
trap cleanup EXIT

# Installed in place (a venv's scripts name its own path, so it cannot be built elsewhere
# and moved); the marker file is written last, so an interrupted install is redone.
install_schemathesis() {
  [ -f "$VENV/.installed" ] && [ -x "$VENV/bin/schemathesis" ] && return 0
  log "installing schemathesis $VERSION into $VENV"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_install python3 python3-venv || die "cannot install python3-venv"
  fi
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" || ! "$VENV/bin/pip" install -q "schemathesis==$VERSION"; then
    die "cannot install schemathesis $VERSION into $VENV"
  fi
  touch "$VENV/.installed"
}

start_servers() {
  local service
  for service in postgres redis rabbitmq; do
    log "starting the $service test server (tests/services/$service.sh start)"
    bash "$REPO/tests/services/$service.sh" start >&2 ||
      die "the $service test server cannot start (tests/services/$service.sh start)"
    eval "$(bash "$REPO/tests/services/$service.sh" env)"
  done
  for tool in psql redis-cli curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
  done
}

# Four devices with an hour of rows each (one a minute), as the worker's PostgreSQL sink
# writes them, one device with payloads of every JSON kind, and the Redis Sink's latest
# value of three devices.
fill_stores() {
  psql -q -v ON_ERROR_STOP=1 "$TRIBUTARY_TEST_POSTGRES_URL" >/dev/null <<SQL ||
CREATE TABLE $TABLE ("id" text PRIMARY KEY, "device" text, "topic" text,
  "received_at" timestamptz, "payload" jsonb);
CREATE INDEX ON $TABLE (device, received_at, id);
INSERT INTO $TABLE
SELECT format('01J%s%s', d.n, lpad(m::text, 21, '0')), d.name, 'devices/' || d.name || '/telemetry',
  timestamptz '2026-01-05T10:00:00Z' + m * interval '1 minute',
  jsonb_build_object('temperature', 20 + d.n + m / 10.0, 'state', 'ok')
FROM (VALUES (1, 'site-a-1'), (2, 'site-a-2'), (3, 'site-b-1'), (4, 'press-1')) AS d(n, name),
  generate_series(0, 59) AS m;
INSERT INTO $TABLE VALUES
  ('01J5a', 'odd-1', 'devices/odd-1/status', '2026-01-05T10:00:00Z', '"text"'),
  ('01J5b', 'odd-1', 'devices/odd-1/status', '2026-01-05T10:01:00Z', '[1, 2]'),
  ('01J5c', 'odd-1', 'devices/odd-1/status', '2026-01-05T10:02:00Z', '{"temperature": null}'),
  ('01J5d', 'odd-1', 'devices/odd-1/status', '2026-01-05T10:03:00Z', 'null');
SQL
    die "cannot create and fill the table $TABLE"
  local device
  for device in site-a-1 site-a-2 site-b-1; do
    redis-cli -u "$TRIBUTARY_TEST_REDIS_URL" SET "$RUN:latest:$device" \
      '{"temperature":21.5,"state":"ok"}' >/dev/null || die "cannot write to Redis"
    redis-cli -u "$TRIBUTARY_TEST_REDIS_URL" SET "$RUN:latest:$device#id" \
      "01J0000000000000000000000$device" >/dev/null || die "cannot write to Redis"
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_api NAME SOURCES: writes NAME's config with the sources SOURCES (YAML lines after
# `postgres`) and starts the API; sets API (its base URL), API_PID and KEY.
start_api() {
  local name="$1" sources="$2" port hash
  port="$(free_port)"
  KEY="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  hash="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
  cat >"$WORK/$name.yaml" <<YAML
listen: 127.0.0.1:$port
postgres: {urlFile: $WORK/postgres-url, table: $TABLE}
$sources
tenant: $RUN
apiKeys:
  - name: schemathesis
    sha256: $hash
    scope: all
    commands: true
    rateLimit: {requestsPerSecond: 100000, burst: 100000}
YAML
  "$BIN" --config "$WORK/$name.yaml" --check >"$WORK/$name-check.log" 2>&1 ||
    die "tributary-api refuses the $name config: $(cat "$WORK/$name-check.log")"
  "$BIN" --config "$WORK/$name.yaml" >"$WORK/$name-api.log" 2>&1 &
  API_PID=$!
  API="http://127.0.0.1:$port"
  local deadline=$((SECONDS + 60))
  until curl -sf -o /dev/null "$API/readyz"; do
    kill -0 "$API_PID" 2>/dev/null || die "tributary-api ($name) exited at start; see $WORK/$name-api.log"
    [ "$SECONDS" -lt "$deadline" ] || die "tributary-api ($name) not ready within 60 s; see $WORK/$name-api.log"
    sleep 0.2
  done
}

stop_api() {
  kill -TERM "$API_PID" 2>/dev/null || true
  wait "$API_PID" 2>/dev/null || true
  API_PID=""
}

# verify_report NAME: every operation of NAME's document but the WebSocket one
# (schemathesis.toml says why) must be in its JUnit report, passed; a skipped or missing
# operation is a failure. Adds to PASSED and FAILED.
verify_report() {
  local name="$1" counts
  counts="$(python3 - "$name" "$WORK/$name.openapi.json" "$WORK/$name-report" <<'PY'
import glob, json, sys
import xml.etree.ElementTree as ET

name, document, reports = sys.argv[1], json.load(open(sys.argv[2])), glob.glob(sys.argv[3] + "/junit*.xml")
expected = {
    f"{method.upper()} {path}"
    for path, item in document["paths"].items()
    for method, operation in item.items()
    if operation.get("operationId") != "liveWebSocket"
}
cases = {}
for report in reports:
    cases.update({case.get("name"): case for case in ET.parse(report).getroot().iter("testcase")})
passed = failed = 0
for operation in sorted(expected | set(cases)):
    case = cases.get(operation)
    problem = (
        "no report" if not reports else
        "not tested" if case is None else
        "failed" if case.find("failure") is not None or case.find("error") is not None else
        "skipped" if case.find("skipped") is not None else None
    )
    if problem:
        failed += 1
        print(f"FAIL {name}: {operation}: {problem}", file=sys.stderr)
    else:
        passed += 1
print(passed, failed)
PY
)" || die "cannot read the $name report"
  PASSED=$((PASSED + ${counts% *}))
  FAILED=$((FAILED + ${counts#* }))
}

# run_schemathesis NAME CONFIG EXAMPLES: the whole document of the running API.
run_schemathesis() {
  local name="$1" config="$2" examples="$3" status=0
  # Fetched from the server (with its configured maxima), given as a file: schemathesis
  # leaves out the path a document came from, and /openapi.json is an operation to test.
  curl -sf "$API/openapi.json" -o "$WORK/$name.openapi.json" || die "GET /openapi.json failed ($name)"
  log "schemathesis $VERSION on the $name server: seed $SEED, $examples examples per operation (a minute or so)"
  (cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$config" \
    run "$WORK/$name.openapi.json" --url "$API" \
    --header "Authorization: Bearer $KEY" \
    --checks all \
    --seed "$SEED" --max-examples "$examples" \
    --generation-database none \
    --request-timeout 10 \
    --report junit --report-dir "$WORK/$name-report" \
    --no-color) >"$WORK/$name-schemathesis.log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$WORK/$name-schemathesis.log"
    echo "FAIL $name: schemathesis exited $status; the API's log is $WORK/$name-api.log"
  else
    sed -n '/^=* SUMMARY =*$/,$p' "$WORK/$name-schemathesis.log"
  fi
  verify_report "$name"
  [ "$status" -eq 0 ] || [ "$FAILED" -gt 0 ] || FAILED=$((FAILED + 1))
  kill -0 "$API_PID" 2>/dev/null || die "tributary-api ($name) exited during the run; see $WORK/$name-api.log"
}

install_schemathesis
start_servers
log "building tributary-api"
(cd "$REPO" && cargo build -q --locked -p tributary-api --bin tributary-api) || die "cargo build failed"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/tributary-api"
fill_stores
printf %s "$TRIBUTARY_TEST_POSTGRES_URL" >"$WORK/postgres-url"
printf %s "$TRIBUTARY_TEST_REDIS_URL" >"$WORK/redis-url"
printf %s "$TRIBUTARY_TEST_AMQP_URL" >"$WORK/amqp-uri"
PASSED=0
FAILED=0

# The pipeline's queue (its depth is the backlog) and a roster of registered devices, one of
# them with rows in the table and one without.
rabbit_api PUT "/api/queues/%2F/$RUN.pipeline" -H 'content-type: application/json' \
  -d '{"durable": true, "auto_delete": false}' >/dev/null || die "cannot declare the backlog queue"
printf '%s' '{"devices": [{"device": "dev-0", "resource": "dev-0", "ready": true, "connected": true, "lastSeen": "2026-01-05T10:00:00Z"}, {"device": "registered-only", "resource": "registered-only", "disabled": true}]}' |
  gzip >"$WORK/devices.json.gz"
start_api full "redis: {urlFile: $WORK/redis-url, keyTemplate: \"$RUN:latest:{device}\"}
live: {uriFile: $WORK/amqp-uri, exchange: tributary.live.$RUN, declareExchange: true, backlogQueue: $RUN.pipeline}
commands: {uriFile: $WORK/amqp-uri, maxWaitSeconds: 5}
deviceRosterFile: $WORK/devices.json.gz"
deadline=$((SECONDS + 60))
until curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "$API/v1/backlog"; do
  [ "$SECONDS" -lt "$deadline" ] || die "the full API read no backlog within 60 s; see $WORK/full-api.log"
  sleep 0.5
done
run_schemathesis full "$HERE/schemathesis.toml" "$EXAMPLES"
stop_api

# Without live messages and commands their endpoints (and the backlog, read on the live
# connection) answer 503 by design ("not configured", documented): accepted from those
# three operations only.
cat "$HERE/schemathesis.toml" - >"$WORK/minimal.toml" <<'TOML'

[[operations]]
include-operation-id = ["liveStream", "sendCommand", "backlog"]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
TOML
start_api minimal ""
run_schemathesis minimal "$WORK/minimal.toml" "$(((EXAMPLES + 2) / 3))"
stop_api

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] || exit 1
ok=1
