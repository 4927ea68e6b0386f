#!/usr/bin/env bash
# Benchmark (not a test): the application API on a big history table and with many live
# clients, each beside a peer in the same run; prints the figures and `BENCH figure=…`
# lines (collected by hack/bench.sh).
#   api-image/bench.sh                  # BENCH_MODE=all|history|fanout
#   BENCH_HISTORY_ROWS=10000000 BENCH_HISTORY_SECONDS=10 BENCH_HISTORY_CONCURRENCY=8
#   BENCH_SSE_CLIENTS=100 BENCH_SSE_MESSAGES=2000 BENCH_SSE_RATE=100
# history: the real tributary-api answers pages and hourly buckets of one device's day and a
# 10-device group's day from a table shaped like a PostgreSQL Sink's, beside the same SQL
# prepared and run straight against PostgreSQL. The table is loaded once (10 million rows:
# minutes, about 3 GB) and kept for the next runs in that PostgreSQL instance, under a name
# holding its row count (api_bench_readings_v1_<rows>); drop it there to free the space.
# fanout: BENCH_SSE_CLIENTS clients on /v1/stream while messages go to the live exchange at
# a fixed rate: publish → receipt latency, delivered share, the API's CPU and memory, beside
# a plain AMQP consumer of the same exchange.
# Starts (or reuses) our RabbitMQ and PostgreSQL on loopback via tests/services/ (which
# honour TRIBUTARY_RABBITMQ_INSTANCE, TRIBUTARY_PG_INSTANCE and their ports); the API
# processes it starts listen on free loopback ports and are stopped after.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
for service in rabbitmq postgres; do
  tests/services/$service.sh start
  eval "$(tests/services/$service.sh env)"
done
exec cargo bench -p tributary-api --bench api
