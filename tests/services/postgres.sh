#!/usr/bin/env bash
# Our own PostgreSQL on loopback for integration tests and benchmarks.
#   tests/services/postgres.sh start|stop|status|env|tls
# Installs Debian's postgresql when missing, runs one cluster as the `postgres` user with
# its data under /var/lib/tributary-services/$INSTANCE, listening on 127.0.0.1:$PORT with a
# password user. Start is idempotent; stop stops exactly the PID in our PID file.
# `tls` makes the running instance serve TLS as well (plain connections keep working), with
# a certificate for localhost/127.0.0.1 from a throwaway CA made under $BASE/tls; it stays
# on for that instance's data directory. It prints the env the TLS tests read.
# A second instance (e.g. for an outage test) runs with other values of:
#   TRIBUTARY_PG_INSTANCE (default postgres), TRIBUTARY_PG_PORT (default 5433)
set -euo pipefail
# shellcheck source=tests/services/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

INSTANCE="${TRIBUTARY_PG_INSTANCE:-postgres}"
PORT="${TRIBUTARY_PG_PORT:-5433}"
BASE="/var/lib/tributary-services/$INSTANCE"
DATA="$BASE/data"
SOCK="$BASE/sock"
LOG="$BASE/postgres.log"
PIDFILE="$BASE/postgres.pid"
USER_NAME=tributary
PASSWORD=tributary
DB=tributary
DEADLINE_SECONDS=60
LOG_PREFIX="postgres.sh[$INSTANCE]"

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [ -n "$dir" ] && echo "$dir"
}

install_if_missing() {
  if [ -z "$(pg_bin)" ]; then
    log "installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt_install postgresql
  fi
  [ -n "$(pg_bin)" ] || { log "postgresql binaries not found after install"; exit 1; }
}

ready() {
  PGPASSWORD="$PASSWORD" "$(pg_bin)/psql" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" -d "$DB" \
    -tAc 'select 1' >/dev/null 2>&1
}

start() {
  install_if_missing
  local bin
  bin="$(pg_bin)"
  if pid="$(running_pid)"; then
    if ready; then log "already running (pid $pid)"; return 0; fi
  fi
  mkdir -p "$BASE" "$SOCK"
  chown postgres:postgres "$BASE" "$SOCK"
  local fresh=0
  if [ ! -f "$DATA/PG_VERSION" ]; then
    fresh=1
    rm -rf "$DATA"
    install -d -o postgres -g postgres -m 700 "$DATA"
    runuser -u postgres -- "$bin/initdb" -D "$DATA" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 >"$BASE/initdb.log" 2>&1 \
      || { log "initdb failed, see $BASE/initdb.log"; exit 1; }
  fi
  # A stale postmaster.pid from a killed run would block the start.
  if [ -f "$DATA/postmaster.pid" ] && ! kill -0 "$(head -n1 "$DATA/postmaster.pid")" 2>/dev/null; then
    rm -f "$DATA/postmaster.pid"
  fi
  touch "$LOG" && chown postgres:postgres "$LOG"
  runuser -u postgres -- "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$DEADLINE_SECONDS" \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $SOCK -c fsync=off -c max_connections=200" \
    start >/dev/null || { log "pg_ctl start failed, see $LOG"; tail -n 20 "$LOG" >&2; exit 1; }
  head -n1 "$DATA/postmaster.pid" >"$PIDFILE"
  if [ "$fresh" = 1 ] || ! ready; then
    runuser -u postgres -- "$bin/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$USER_NAME') THEN
    CREATE ROLE $USER_NAME LOGIN PASSWORD '$PASSWORD' CREATEDB;
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $DB OWNER $USER_NAME' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB')\gexec
SQL
  fi
  wait_ready "$DEADLINE_SECONDS" 0.2
  log "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
}

# SIGINT is PostgreSQL's fast shutdown: disconnect clients, checkpoint, exit.
stop() { stop_running "$DEADLINE_SECONDS" fail signal_pid INT; }

tls() {
  running_pid >/dev/null && ready || { log "not running: run start first"; exit 1; }
  local dir="$BASE/tls" bin
  bin="$(pg_bin)"
  throwaway_tls "$dir"
  chown -R postgres:postgres "$dir"
  runuser -u postgres -- "$bin/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL >/dev/null
ALTER SYSTEM SET ssl_cert_file = '$dir/server.pem';
ALTER SYSTEM SET ssl_key_file = '$dir/server.key';
ALTER SYSTEM SET ssl = on;
SELECT pg_reload_conf();
SQL
  # The reload is asynchronous: wait until new sessions see it.
  local end=$((SECONDS + DEADLINE_SECONDS))
  until [ "$(runuser -u postgres -- "$bin/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -tAc 'show ssl')" = on ]; do
    [ "$SECONDS" -lt "$end" ] || { log "ssl not on after reload, see $LOG"; exit 1; }
    sleep 0.1
  done
  echo "export TRIBUTARY_TEST_POSTGRES_TLS_URL=postgres://$USER_NAME:$PASSWORD@localhost:$PORT/$DB"
  echo "export TRIBUTARY_TEST_POSTGRES_CA_FILE=$dir/ca.pem"
}

print_env() {
  echo "export TRIBUTARY_TEST_POSTGRES_URL=postgres://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
}

service_main "$@"
