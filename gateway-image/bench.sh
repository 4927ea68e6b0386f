#!/usr/bin/env bash
# Benchmark (not a test): MQTT QoS 1 ingest through the gateway (-> RabbitMQ with confirms)
# beside RabbitMQ's own MQTT plugin (same broker) and Mosquitto (no durability), same load
# generator, same run, and beside the broker's confirm ceiling (an AMQP client publishing
# the same load to the same queue: 1 connection x 1 channel like the gateway, and 4 x 1);
# then memory per idle connection and around a burst of password logins, gateway vs
# Mosquitto; then a reconnect storm (10,000 devices at once), device table with generated
# secrets vs argon2 passwords; then the round trip of request/response commands to 1,000
# connected devices, gateway vs RabbitMQ's MQTT plugin and Mosquitto. Each figure is also
# printed as a `BENCH figure=…` line (collected by hack/bench.sh).
#   gateway-image/bench.sh                 # BENCH_MODE=all|throughput (= ingest)|idle|logins|storm|commands
#   BENCH_CLIENTS=20 BENCH_MESSAGES=2000 BENCH_WINDOW=10 BENCH_IDLE_CONNECTIONS=10000
#   BENCH_QUEUE_TYPE=quorum|classic BENCH_CEILING_SHAPES=1x1,4x1 BENCH_GATEWAY_BIN=<other build>
#   BENCH_LOGINS=1000 BENCH_LOGIN_PARALLEL=8 BENCH_LOGIN_SETTLE_SECONDS=10
#   BENCH_STORM_DEVICES=10000 BENCH_STORM_ARGON2_DEVICES=10000 (fewer: time extrapolated)
#   BENCH_COMMAND_DEVICES=1000 BENCH_COMMANDS=2000 BENCH_COMMAND_WINDOW=10
# Starts (or reuses) our RabbitMQ on loopback via tests/services/rabbitmq.sh (which honours
# TRIBUTARY_RABBITMQ_INSTANCE and its ports); starts its own Mosquitto and gateway processes
# on loopback ports BENCH_PORT_BASE (28830) to BENCH_PORT_BASE+5 and stops them after.
set -euo pipefail
# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/lib" && pwd)/apt.sh"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tests/services/rabbitmq.sh start
eval "$(tests/services/rabbitmq.sh env)"
if ! command -v mosquitto >/dev/null 2>&1 || ! command -v mosquitto_passwd >/dev/null 2>&1; then
  apt-get update -qq
  apt_install mosquitto
fi
# 10,000 idle connections need as many descriptors on each side: raise the soft limit to
# the hard one.
ulimit -n "$(ulimit -Hn)"
echo "bench: open-file limit $(ulimit -n)" >&2
exec cargo bench -p tributary-gateway --bench mqtt_ingest
