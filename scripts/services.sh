#!/usr/bin/env bash
# Makes sure the local PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are up:
# starts them if they are installed and stopped, uses docker compose where a Docker engine
# runs, or says in one line what is missing. Sourced or run; exits non-zero if it cannot.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

ensure_postgres() {
  port_open 5432 && return 0
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL..." >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  elif docker info >/dev/null 2>&1; then
    docker compose up -d postgres
  else
    echo "error: PostgreSQL is not running on 127.0.0.1:5432 and not installed: apt-get install postgresql (or run docker compose up -d postgres)" >&2
    return 1
  fi
  wait_port 5432 PostgreSQL
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "starting RabbitMQ..." >&2
    rabbitmq-server -detached
    rabbitmqctl await_startup >/dev/null 2>&1 || true
  elif docker info >/dev/null 2>&1; then
    docker compose up -d rabbitmq
  else
    echo "error: RabbitMQ is not running on 127.0.0.1:5672 and not installed: apt-get install rabbitmq-server (or run docker compose up -d rabbitmq)" >&2
    return 1
  fi
  wait_port 5672 RabbitMQ
}

ensure_postgres
ensure_rabbitmq
