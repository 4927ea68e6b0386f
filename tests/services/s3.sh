#!/usr/bin/env bash
# Our own S3-compatible server (moto, from PyPI) on loopback for integration tests.
#   tests/services/s3.sh start|stop|status|env
# Installs moto[server] into a venv under /var/cache/tributary/venv-moto when missing, runs
# it on 127.0.0.1:9100 (in memory) with its log and PID file under
# /var/lib/tributary-services/$INSTANCE. Start is idempotent; stop stops exactly our PID.
# A second instance runs with other values of:
#   TRIBUTARY_S3_INSTANCE (default s3), TRIBUTARY_S3_PORT (default 9100)
set -euo pipefail
# shellcheck source=tests/services/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

INSTANCE="${TRIBUTARY_S3_INSTANCE:-s3}"
PORT="${TRIBUTARY_S3_PORT:-9100}"
VENV="/var/cache/tributary/venv-moto"
BASE="/var/lib/tributary-services/$INSTANCE"
LOG="$BASE/moto.log"
PIDFILE="$BASE/moto.pid"
DEADLINE_SECONDS=60
ACCESS_KEY=tributary-test
SECRET_KEY=tributary-test-secret
REGION=us-east-1
LOG_PREFIX="s3.sh[$INSTANCE]"

install_if_missing() {
  if [ ! -x "$VENV/bin/moto_server" ]; then
    log "installing moto[server] into $VENV"
    command -v python3 >/dev/null || {
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null && apt_install python3 python3-venv
    }
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'moto[server]'
  fi
}

ready() {
  "$VENV/bin/python" - "$PORT" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
PY
}

start() {
  install_if_missing
  if pid="$(running_pid)" && ready; then log "already running (pid $pid)"; return 0; fi
  mkdir -p "$BASE"
  spawn_detached "$LOG" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT"
  wait_ready "$DEADLINE_SECONDS" 0.2
  log "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
}

stop() { stop_running "$DEADLINE_SECONDS" fail signal_pid TERM; }

print_env() {
  echo "export TRIBUTARY_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT"
  echo "export TRIBUTARY_TEST_S3_ACCESS_KEY=$ACCESS_KEY"
  echo "export TRIBUTARY_TEST_S3_SECRET_KEY=$SECRET_KEY"
  echo "export TRIBUTARY_TEST_S3_REGION=$REGION"
}

service_main "$@"
