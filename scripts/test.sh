#!/usr/bin/env bash
# The test command: brings up the local PostgreSQL and RabbitMQ if needed, then runs every test
# of the workspace (unit, property, store/bus against the real servers, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
if ! command -v rabbitmqctl >/dev/null 2>&1; then
  echo "error: the tests give each test its own RabbitMQ vhost with rabbitmqctl, which is missing: apt-get install rabbitmq-server" >&2
  exit 1
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "error: the dashboard's test drives headless Chromium, which is missing: apt-get install chromium (or set CHROMIUM to a Chromium binary)" >&2
  exit 1
fi
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  echo "error: the clock-skew fault test preloads libfaketime, which is missing: apt-get install faketime" >&2
  exit 1
fi
exec cargo test --workspace --locked "$@"
