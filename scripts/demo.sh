#!/usr/bin/env bash
# Local demo: two throwaway PostgreSQL 15 clusters ("old" with sample data, "new" with the
# schema only) and switchyard-proxy in front of them. Ctrl-C stops everything and removes
# the clusters. `scripts/demo.sh --smoke` runs a few queries through the proxy and exits.
set -euo pipefail

cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

PG_BIN=${SWITCHYARD_PG_BIN:-/usr/lib/postgresql/15/bin}
LISTEN_PORT=${DEMO_PORT:-6432}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9187}
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL 15 not found in $PG_BIN: run bash .ci/setup --demo first" >&2; exit 1; }

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

echo "==> building switchyard-proxy (release)"
cargo build --release -q -p switchyard-proxy

WORK=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
chmod 755 "$WORK"
PROXY_PID=
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
  for c in old new; do
    [ -d "$WORK/$c" ] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

declare -A PORT
for c in old new; do
  PORT[$c]=$(free_port)
  mkdir -p "$WORK/$c.sock"
  chown postgres "$WORK/$c.sock" 2>/dev/null || true
  [ "$(id -u)" = 0 ] && chown postgres "$WORK"
  echo "==> starting the $c cluster on port ${PORT[$c]}"
  as_pg "$PG_BIN/initdb" -D "$WORK/$c" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -l "$WORK/$c.log" -w \
    -o "-p ${PORT[$c]} -k $WORK/$c.sock -c listen_addresses=127.0.0.1 -c max_prepared_transactions=20" start >/dev/null
  psql -X -q -h 127.0.0.1 -p "${PORT[$c]}" -U postgres -c "CREATE DATABASE app" postgres
done

echo "==> loading sample data into old, schema into new"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[old]}" -U postgres app <<'SQL'
CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
  email text UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers,
  amount numeric(12,2) NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, amount) SELECT 1 + (g % 1000), (g % 500) + 0.99 FROM generate_series(1, 10000) g;
SQL
pg_dump -h 127.0.0.1 -p "${PORT[old]}" -U postgres --schema-only app | psql -X -q -h 127.0.0.1 -p "${PORT[new]}" -U postgres app >/dev/null

echo "==> starting switchyard-proxy on 127.0.0.1:$LISTEN_PORT (admin on 127.0.0.1:$ADMIN_PORT)"
"${CARGO_TARGET_DIR:-target}/release/switchyard-proxy" \
  --old "postgres://postgres@127.0.0.1:${PORT[old]}/app" \
  --new "postgres://postgres@127.0.0.1:${PORT[new]}/app" \
  --listen "127.0.0.1:$LISTEN_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" 2>"$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 100); do
  psql -X -q -h 127.0.0.1 -p "$LISTEN_PORT" -U postgres app -c 'select 1' >/dev/null 2>&1 && break
  kill -0 "$PROXY_PID" 2>/dev/null || { cat "$WORK/proxy.log" >&2; exit 1; }
  sleep 0.1
done

if [ "$SMOKE" = 1 ]; then
  psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$LISTEN_PORT" -U postgres app \
    -c "SELECT count(*) AS customers FROM customers" \
    -c "INSERT INTO customers (name) VALUES ('through the proxy') RETURNING id, name"
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/api/status"; echo
  echo "demo smoke run OK"
  exit 0
fi

cat <<TXT

Switchyard is running.
  connect:   psql "postgres://postgres@127.0.0.1:$LISTEN_PORT/app"
  status:    curl http://127.0.0.1:$ADMIN_PORT/api/status
  metrics:   curl http://127.0.0.1:$ADMIN_PORT/metrics
  old:       psql -h 127.0.0.1 -p ${PORT[old]} -U postgres app
  new:       psql -h 127.0.0.1 -p ${PORT[new]} -U postgres app
  proxy log: $WORK/proxy.log
Press Ctrl-C to stop and remove everything.
TXT
wait "$PROXY_PID"
