#!/usr/bin/env bash
# Benchmark (not a test): worker -> PostgreSQL rows/s beside a plain COPY of the same rows,
# same run, same PostgreSQL, and beside a bare consumer of the same broker (its drain
# ceiling); prints the rates, the ratios and `BENCH figure=…` lines (collected by
# hack/bench.sh).
#   worker-image/bench.sh            # BENCH_ROWS=100000 by default
# Starts (or reuses) our RabbitMQ and PostgreSQL on loopback via tests/services/ (which
# honour TRIBUTARY_RABBITMQ_INSTANCE, TRIBUTARY_PG_INSTANCE and their ports).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
for service in rabbitmq postgres; do
  tests/services/$service.sh start
  eval "$(tests/services/$service.sh env)"
done
export BENCH_ROWS="${BENCH_ROWS:-100000}"
exec cargo bench -p tributary-worker --bench postgres_vs_copy
