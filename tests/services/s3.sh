#!/usr/bin/env bash
# Our own S3-compatible server (moto, from PyPI) on loopback for integration tests.
#   tests/services/s3.sh start|stop|status|env
# Installs moto[server] into a venv under /var/cache/tributary/venv-moto when missing, runs
# it on 127.0.0.1:9100 (in memory) with its log and PID file under
# /var/lib/tributary-services/s3. Start is idempotent; stop stops exactly our PID.
set -euo pipefail
# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/apt.sh"

PORT="${TRIBUTARY_S3_PORT:-9100}"
VENV="/var/cache/tributary/venv-moto"
BASE="/var/lib/tributary-services/s3"
LOG="$BASE/moto.log"
PIDFILE="$BASE/moto.pid"
DEADLINE_SECONDS=60
ACCESS_KEY=tributary-test
SECRET_KEY=tributary-test-secret
REGION=us-east-1

log() { echo "s3.sh: $*" >&2; }

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

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
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
  setsid bash -c 'echo $$ >"$1"; exec "$2/bin/moto_server" -H 127.0.0.1 -p "$3"' \
    _ "$PIDFILE" "$VENV" "$PORT" </dev/null >"$LOG" 2>&1 &
  local end=$((SECONDS + DEADLINE_SECONDS))
  until ready; do
    [ "$SECONDS" -lt "$end" ] || { log "not ready within ${DEADLINE_SECONDS}s, see $LOG"; tail -n 20 "$LOG" >&2 || true; exit 1; }
    sleep 0.2
  done
  log "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then log "not running"; rm -f "$PIDFILE"; return 0; fi
  kill -TERM "$pid"
  local end=$((SECONDS + DEADLINE_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$end" ] || { log "pid $pid did not stop within ${DEADLINE_SECONDS}s"; exit 1; }
    sleep 0.1
  done
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

status() {
  if pid="$(running_pid)" && ready; then echo "running pid $pid 127.0.0.1:$PORT"; else echo "stopped"; return 3; fi
}

env_lines() {
  echo "export TRIBUTARY_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT"
  echo "export TRIBUTARY_TEST_S3_ACCESS_KEY=$ACCESS_KEY"
  echo "export TRIBUTARY_TEST_S3_SECRET_KEY=$SECRET_KEY"
  echo "export TRIBUTARY_TEST_S3_REGION=$REGION"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
