#!/usr/bin/env bash
# A private RabbitMQ node on loopback for Tributary's integration tests and benchmarks.
#
#   tests/services/rabbitmq.sh start|stop|status|env|tls
#
# Runs OUR OWN node (never the Debian package's service) as a background process with its
# own node name, data and log directories, config file and PID file. Only the PID this script
# started is ever stopped. Idempotent: `start` on a running node is a no-op.
#
# Several independent instances can run side by side (the gateway's broker-outage test uses
# a second one so stopping it does not disturb other tests):
#   TRIBUTARY_RABBITMQ_INSTANCE   instance name (default: test) -> node tributary-NAME@localhost
#   TRIBUTARY_RABBITMQ_PORT       AMQP port            (default: 5673)
#   TRIBUTARY_RABBITMQ_MGMT_PORT  management HTTP port (default: 15673)
#   TRIBUTARY_RABBITMQ_MQTT_PORT  MQTT plugin port     (default: 1884)
#   TRIBUTARY_RABBITMQ_START_TIMEOUT seconds to wait for readiness (default: 120)
#   TRIBUTARY_RABBITMQ_TLS_PORT   AMQPS port of `tls` (default: the AMQP port + 1000)
#
# `tls` makes the running node listen for AMQPS as well, on 127.0.0.1:TLS_PORT, with a
# certificate for localhost/127.0.0.1 from a throwaway CA made under $BASE/tls: RabbitMQ
# reads listeners only at boot, so it restarts the node once (data kept) with those lines
# added to its config, and prints the env the AMQPS tests read. The listener stays until
# `stop`; a later `start` (and everyone who never runs `tls`) gets the plain config.
#
# Also installs Debian's mosquitto-clients (mosquitto_pub/sub), which the gateway's tests use
# as a third-party MQTT client; `tests/services/install-clients.sh` does only that part.
set -euo pipefail
# shellcheck source=tests/services/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

INSTANCE="${TRIBUTARY_RABBITMQ_INSTANCE:-test}"
AMQP_PORT="${TRIBUTARY_RABBITMQ_PORT:-5673}"
PORT="${AMQP_PORT}"
MGMT_PORT="${TRIBUTARY_RABBITMQ_MGMT_PORT:-15673}"
MQTT_PORT="${TRIBUTARY_RABBITMQ_MQTT_PORT:-1884}"
START_TIMEOUT="${TRIBUTARY_RABBITMQ_START_TIMEOUT:-120}"
TLS_PORT="${TRIBUTARY_RABBITMQ_TLS_PORT:-$((AMQP_PORT + 1000))}"
USER_NAME="tributary"
USER_PASS="tributary-test-pass"
NODE="tributary-${INSTANCE}@localhost"
BASE="/var/lib/tributary-services/rabbitmq/${INSTANCE}"
PIDFILE="${BASE}/server.pid"
LOG="${BASE}/log/stdout.log"
RABBIT_BIN="/usr/lib/rabbitmq/bin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_PREFIX="rabbitmq[${INSTANCE}]"
TLS_DIR="${BASE}/tls"
# Present while the node is to serve AMQPS (written by `tls`, removed by `stop`).
TLS_MARKER="${TLS_DIR}/listen"

install_packages() {
    if [ ! -x "${RABBIT_BIN}/rabbitmq-server" ]; then
        log "installing Debian's rabbitmq-server"
        # The package's own service is not started by the install (apt_install), and we
        # never use it.
        apt-get update -qq
        apt_install rabbitmq-server
        # Where the install auto-started the package's own node (rabbit@host, port 5672),
        # stop it through its init script only; it does not clash with our ports, but we
        # do not want a second broker eating memory on a small machine.
        if /usr/sbin/rabbitmqctl -q status >/dev/null 2>&1; then
            log "stopping the package's own rabbitmq-server service (started by the install)"
            service rabbitmq-server stop >/dev/null 2>&1 || true
        fi
    fi
    bash "${HERE}/install-clients.sh"
}

# The environment every rabbitmq-* command of our node needs: node name, private cookie
# (HOME), directories, config file.
node_env() {
    export HOME="${BASE}/home"
    export RABBITMQ_NODENAME="${NODE}"
    export RABBITMQ_CONFIG_FILE="${BASE}/rabbitmq"
    export RABBITMQ_ENABLED_PLUGINS_FILE="${BASE}/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="${BASE}/mnesia"
    export RABBITMQ_LOG_BASE="${BASE}/log"
    export RABBITMQ_PID_FILE="${BASE}/beam.pid"
    export RABBITMQ_NODE_IP_ADDRESS="127.0.0.1"
    export RABBITMQ_NODE_PORT="${AMQP_PORT}"
    export RABBITMQ_DIST_PORT="$((AMQP_PORT + 20000))"
    export RABBITMQ_CONF_ENV_FILE="${BASE}/rabbitmq-env.conf"
    export ERL_EPMD_ADDRESS="127.0.0.1"
}

write_config() {
    mkdir -p "${BASE}/home" "${BASE}/mnesia" "${BASE}/log"
    : >"${BASE}/rabbitmq-env.conf"
    cat >"${BASE}/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:${AMQP_PORT}
management.tcp.ip = 127.0.0.1
management.tcp.port = ${MGMT_PORT}
mqtt.listeners.tcp.default = 127.0.0.1:${MQTT_PORT}
mqtt.allow_anonymous = false
default_user = ${USER_NAME}
default_pass = ${USER_PASS}
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
log.console = false
log.file.level = warning
EOF
    if [ -f "${TLS_MARKER}" ]; then
        cat >>"${BASE}/rabbitmq.conf" <<EOF
listeners.ssl.default = 127.0.0.1:${TLS_PORT}
ssl_options.cacertfile = ${TLS_DIR}/ca.pem
ssl_options.certfile = ${TLS_DIR}/server.pem
ssl_options.keyfile = ${TLS_DIR}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    fi
    echo '[rabbitmq_management,rabbitmq_mqtt].' >"${BASE}/enabled_plugins"
}

node_ready() {
    node_env
    "${RABBIT_BIN}/rabbitmqctl" -q -n "${NODE}" await_startup --timeout 5 >/dev/null 2>&1
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Ready for clients: booted, AMQP and management ports open. A node that exited during
# startup fails the start at once, with the last lines of its output.
ready() {
    if ! running_pid >/dev/null; then
        log "the node exited during startup; last lines of its output:"
        tail -n 30 "${LOG}" >&2 || true
        exit 1
    fi
    node_ready && port_open "${AMQP_PORT}" && port_open "${MGMT_PORT}"
}

start() {
    if pid="$(running_pid)"; then
        if node_ready; then
            log "already running (pid ${pid})"
            return 0
        fi
        log "pid ${pid} is running but not ready yet; waiting"
    else
        install_packages
        if port_open "${AMQP_PORT}"; then
            log "port ${AMQP_PORT} is taken by a process this script did not start"
            exit 1
        fi
        write_config
        node_env
        log "starting node ${NODE} (AMQP 127.0.0.1:${AMQP_PORT}, management :${MGMT_PORT}, MQTT :${MQTT_PORT})"
        spawn_detached "${LOG}" "${RABBIT_BIN}/rabbitmq-server"
    fi
    wait_ready "${START_TIMEOUT}" 2
    log "ready (pid $(cat "${PIDFILE}"))"
}

# rabbitmqctl addresses our node by name only; the wrapper PID we started then exits.
stop_node() {
    node_env
    log "stopping node ${NODE} (pid $1)"
    "${RABBIT_BIN}/rabbitmqctl" -q -n "${NODE}" stop >/dev/null 2>&1 || kill -TERM "$1" 2>/dev/null || true
}

stop() {
    stop_running 60 kill stop_node
    rm -f "${TLS_MARKER}"
}

# Serve AMQPS too (see the header): restart the running node once with the TLS listener.
tls() {
    if ! running_pid >/dev/null || ! node_ready; then
        log "not running: run start first"
        exit 1
    fi
    throwaway_tls "${TLS_DIR}"
    if [ ! -f "${TLS_MARKER}" ] || ! port_open "${TLS_PORT}"; then
        touch "${TLS_MARKER}"
        log "restarting node ${NODE} to add the AMQPS listener 127.0.0.1:${TLS_PORT}"
        stop_running 60 kill stop_node
        start >&2
        local end=$((SECONDS + 30))
        until port_open "${TLS_PORT}"; do
            if [ "${SECONDS}" -ge "${end}" ]; then
                log "AMQPS port ${TLS_PORT} did not open; see ${LOG} and ${BASE}/log"
                exit 1
            fi
            sleep 0.5
        done
    fi
    echo "export TRIBUTARY_TEST_AMQPS_URL=amqps://${USER_NAME}:${USER_PASS}@localhost:${TLS_PORT}/%2f"
    echo "export TRIBUTARY_TEST_RABBITMQ_CA_FILE=${TLS_DIR}/ca.pem"
}

status() {
    if pid="$(running_pid)" && node_ready; then
        echo "running (pid ${pid}, node ${NODE}, AMQP 127.0.0.1:${AMQP_PORT})"
    elif running_pid >/dev/null; then
        echo "starting (pid $(cat "${PIDFILE}"))"
        exit 1
    else
        echo "stopped"
        exit 3
    fi
}

print_env() {
    echo "export TRIBUTARY_TEST_AMQP_URL=amqp://${USER_NAME}:${USER_PASS}@127.0.0.1:${AMQP_PORT}/%2f"
    echo "export TRIBUTARY_TEST_RABBITMQ_API=http://127.0.0.1:${MGMT_PORT}"
    echo "export TRIBUTARY_TEST_RABBITMQ_API_USER=${USER_NAME}"
    echo "export TRIBUTARY_TEST_RABBITMQ_API_PASSWORD=${USER_PASS}"
    echo "export TRIBUTARY_TEST_RABBITMQ_MQTT=127.0.0.1:${MQTT_PORT}"
}

service_main "$@"
