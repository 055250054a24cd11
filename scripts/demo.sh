#!/usr/bin/env bash
# The demo: the orchestrator and the example workers in one process, against the local PostgreSQL
# and RabbitMQ (brought up if needed), in a RabbitMQ vhost and a database of its own that each run
# starts afresh. Prints the sagas' progress as it happens and a summary; exits 0 when every saga
# ended as expected.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
vhost=saga-demo
if command -v rabbitmqctl >/dev/null 2>&1; then
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  rabbitmqctl -q add_vhost "$vhost" >/dev/null
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
  export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/$vhost}"
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/saga_demo}"
cargo build --quiet --locked -p saga-demo --bin demo
exec target/debug/demo "$@"
