#!/usr/bin/env bash
# A fuzz pass over the REST API (issue 6): schemathesis, from PyPI, generates requests from the
# orchestrator's own /openapi.json — valid ones and every kind of invalid one — and checks that
# no answer is a 5xx and that every answer matches the document (status codes, content types,
# bodies). The orchestrator runs in a database and a vhost of its own that each run starts
# afresh, with a definition registered so that starts can succeed. Not part of the test command;
# docs/reliability.md has its last result. EXAMPLES (default 100) sets the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
venv=${SCHEMATHESIS_VENV:-target/schemathesis}
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet schemathesis
fi
vhost=saga-fuzz db=saga_fuzz port=${FUZZ_PORT:-18089}
rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
cargo build --quiet --locked -p orchestrator
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
SAGA_LISTEN="127.0.0.1:$port" RUST_LOG=warn SAGA_API_TOKENS="fuzz:operator:fuzz-token" \
  target/debug/orchestrator >target/fuzz-api.log 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -sf "$base/readyz" >/dev/null && break
  sleep 0.2
done
curl -sf -H 'Authorization: Bearer fuzz-token' -H 'Content-Type: application/json' "$base/v1/definitions" -d '{
  "name": "order",
  "steps": [ { "name": "reserve", "task": "fuzz.reserve", "compensate": "fuzz.release", "timeout": "5s" },
             { "name": "signed", "await": "buyer_signed", "timeout": "1h" } ] }' >/dev/null
"$venv/bin/st" run "$base/openapi.json" --url "$base" -H "Authorization: Bearer fuzz-token" \
  --request-timeout 70 --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance --max-examples "${EXAMPLES:-100}" --workers 4 "$@"
if grep -q 'panicked' target/fuzz-api.log; then
  echo "the orchestrator panicked: target/fuzz-api.log" >&2
  exit 1
fi
