#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for the marketplace storage/API tests.
#
#   eval "$(tests/marketplace/pg_server.sh start)"   # exports CRYPTO_DOCTOR_TEST_PG_URL/_DIR
#   .venv/bin/python -m pytest tests/marketplace        # now also runs the [postgresql] params
#   tests/marketplace/pg_server.sh stop "$CRYPTO_DOCTOR_TEST_PG_DIR"
#
# Runs the server as user "postgres" when invoked as root (initdb refuses root),
# on 127.0.0.1 and a free ephemeral port, with durability off (test data only).
set -euo pipefail

BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
run_as=()
if [ "$(id -u)" = 0 ]; then
  run_as=(runuser -u postgres --)
fi

case "${1:-}" in
start)
  dir=$(mktemp -d /tmp/crypto-doctor-pg.XXXXXX)
  chmod 700 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${run_as[@]}" "$BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  "${run_as[@]}" "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  echo "export CRYPTO_DOCTOR_TEST_PG_URL=postgresql://postgres@127.0.0.1:$port/postgres"
  echo "export CRYPTO_DOCTOR_TEST_PG_DIR=$dir"
  ;;
stop)
  dir=${2:?usage: pg_server.sh stop DIR}
  [ -f "$dir/data/postmaster.pid" ] && "${run_as[@]}" "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start | stop DIR" >&2
  exit 2
  ;;
esac
