#!/usr/bin/env bash
# The whole move on two throwaway PostgreSQL 15 clusters: "old" with a shop's schema and
# data (a foreign key, a trigger, a table without a key; scripts/demo/schema.sql), "new"
# with the schema only, switchyard-proxy in front with shadow reads on, and a small
# application (pgbench running scripts/demo/app.sql) writing and reading through it the
# whole time. Then the backfill, verify, and the cutover: reads-new, writes-new, back to
# reads-new (a rollback) and forward again, with verify after each flip.
#
#   bash scripts/demo.sh           prints each next command and waits for Enter
#   bash scripts/demo.sh --auto    runs every step, then prints a summary table
#   bash scripts/demo.sh --smoke   --auto at a small size (CI): exits 1 if a step fails,
#                                  the application saw an error or verify found differences
#
# Ctrl-C stops everything and removes the clusters. Environment: DEMO_PORT (6432),
# DEMO_ADMIN_PORT (9187), SWITCHYARD_PG_BIN, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=interactive
case "${1:-}" in
  "") ;;
  --auto) MODE=auto ;;
  --smoke) MODE=smoke ;;
  *) echo "usage: bash scripts/demo.sh [--auto | --smoke]" >&2; exit 2 ;;
esac

if [ "$MODE" = smoke ]; then
  CUSTOMERS=1000 ORDERS=10000 EVENTS=2000 APP_RATE=40 CHUNK_ROWS=2000
else
  CUSTOMERS=50000 ORDERS=300000 EVENTS=100000 APP_RATE=100 CHUNK_ROWS=25000
fi
APP_CLIENTS=4
# The application runs as back-to-back pgbench runs of this many seconds: pgbench writes
# its latency log only when a run ends.
APP_SEGMENT=5

PG_BIN=${SWITCHYARD_PG_BIN:-/usr/lib/postgresql/15/bin}
LISTEN_PORT=${DEMO_PORT:-6432}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9187}
DASHBOARD="http://127.0.0.1:$ADMIN_PORT/"
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL 15 not found in $PG_BIN: run bash .ci/setup --demo first" >&2; exit 1; }

if [ -t 1 ]; then BOLD=$'\e[1m' RED=$'\e[31m' OFF=$'\e[0m'; else BOLD= RED= OFF=; fi

echo "${BOLD}Dashboard: $DASHBOARD${OFF}  (live from step 2 on: open it now)"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
now() { date +%s.%N; }

echo "==> building switchyard-proxy, switchyard-backfill and switchyard-reconciler (release)"
cargo build --release -q -p switchyard-proxy -p switchyard-backfill -p switchyard-reconciler
BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
export PATH="$BIN:$PG_BIN:$PATH"

WORK=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/app"
: >"$WORK/results.tsv"
PROXY_PID= APP_PID=
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$APP_PID" ]; then
    touch "$WORK/app.stop"
    kill "$APP_PID" 2>/dev/null || true
    [ -s "$WORK/app/pgbench.pid" ] && kill "$(cat "$WORK/app/pgbench.pid")" 2>/dev/null || true
    wait "$APP_PID" 2>/dev/null || true
  fi
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
  for c in old new; do
    [ -d "$WORK/$c" ] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "${RED}${BOLD}demo failed: $*${OFF}" >&2
  if [ -s "$WORK/proxy.log" ]; then echo "--- last lines of the proxy log:" >&2; tail -n 20 "$WORK/proxy.log" >&2; fi
  exit 1
}

# Shows a step and the commands it runs; interactive mode waits for Enter first.
announce() {
  local title=$1 why=$2
  shift 2
  printf '\n%s==> %s%s\n' "$BOLD" "$title" "$OFF"
  [ -z "$why" ] || echo "$why" | fold -s -w 96
  local c
  for c in "$@"; do printf '    $ %s\n' "$c"; done
  if [ "$MODE" = interactive ]; then
    read -r -p "[Enter] runs it, Ctrl-C stops the demo " _ || true
  fi
}

# One line per step for the summary: kind, name, exit status, start, end, detail.
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/results.tsv"; }

# --- 1. the databases -------------------------------------------------------------------------
announce "1. Two PostgreSQL 15 clusters: old with the shop, new with its schema" \
  "Old: customers, orders (a foreign key to customers, a trigger counting each order on its customer), legacy_events (no primary key): $((CUSTOMERS + ORDERS + EVENTS)) rows. New gets the schema only." \
  "initdb old; initdb new (max_prepared_transactions = 20: dual writes commit in two phases)" \
  "psql \$OLD -v customers=$CUSTOMERS -v orders=$ORDERS -v events=$EVENTS -f scripts/demo/schema.sql" \
  "switchyard-backfill --old \$OLD --new \$NEW --schema-only   # old's schema on new (pg_dump/pg_restore)"
declare -A PORT
for c in old new; do
  PORT[$c]=$(free_port)
  if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi
  as_pg "$PG_BIN/initdb" -D "$WORK/$c" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -l "$WORK/$c.log" -w \
    -o "-p ${PORT[$c]} -k $WORK -c listen_addresses=127.0.0.1 -c max_prepared_transactions=20" start >/dev/null
  psql -X -q -h 127.0.0.1 -p "${PORT[$c]}" -U postgres -c "CREATE DATABASE app" postgres
done
export OLD="postgres://postgres@127.0.0.1:${PORT[old]}/app"
export NEW="postgres://postgres@127.0.0.1:${PORT[new]}/app"
PROXY="postgres://postgres@127.0.0.1:$LISTEN_PORT/app"
t0=$(now)
psql -X -q "$OLD" -v customers="$CUSTOMERS" -v orders="$ORDERS" -v events="$EVENTS" \
  -f scripts/demo/schema.sql || fail "loading old"
switchyard-backfill --old "$OLD" --new "$NEW" --schema-only --pg-bin "$PG_BIN" >/dev/null ||
  fail "copying the schema to new"
record setup "old loaded, schema on new" 0 "$t0" "$(now)" "$((CUSTOMERS + ORDERS + EVENTS)) rows on old"
echo "    OLD=$OLD"
echo "    NEW=$NEW"

# --- 2. the proxy -----------------------------------------------------------------------------
announce "2. The proxy in front of old, shadow reads on" \
  "Every write through it is applied on new in the same transaction (two-phase commit); 20 % of reads are run on both databases, off the client's path, and compared. Watch $DASHBOARD" \
  "switchyard-proxy --old \$OLD --new \$NEW --listen 127.0.0.1:$LISTEN_PORT --admin-listen 127.0.0.1:$ADMIN_PORT --shadow-sample-rate 0.2"
t0=$(now)
switchyard-proxy --old "$OLD" --new "$NEW" --listen "127.0.0.1:$LISTEN_PORT" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" --shadow-sample-rate 0.2 2>"$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 300); do
  psql -X -q "$PROXY" -c 'select 1' >/dev/null 2>&1 && break
  kill -0 "$PROXY_PID" 2>/dev/null || fail "the proxy exited"
  sleep 0.1
done
psql -X -q "$PROXY" -c 'select 1' >/dev/null 2>&1 || fail "the proxy did not accept connections"
record setup "proxy started" 0 "$t0" "$(now)" "$DASHBOARD"

# --- 3. the application -----------------------------------------------------------------------
announce "3. The application: places orders, reads them back, marks them paid" \
  "$APP_CLIENTS clients at $APP_RATE transactions/s through the proxy, from now to the end (scripts/demo/app.sql)." \
  "pgbench -n -c $APP_CLIENTS -j 2 -R $APP_RATE -f scripts/demo/app.sql -D customers=$CUSTOMERS \$PROXY"
app_loop() {
  local i=0
  while [ ! -e "$WORK/app.stop" ]; do
    i=$((i + 1))
    pgbench -n -c "$APP_CLIENTS" -j 2 -R "$APP_RATE" -T "$APP_SEGMENT" -f scripts/demo/app.sql \
      -D customers="$CUSTOMERS" -l --log-prefix="$WORK/app/seg$i" "$PROXY" \
      >"$WORK/app/seg$i.out" 2>&1 &
    echo $! >"$WORK/app/pgbench.pid"
    wait $! || echo "seg$i" >>"$WORK/app/failed"
    rm -f "$WORK/app/pgbench.pid"
  done
}
t0=$(now)
app_loop &
APP_PID=$!
for _ in $(seq 300); do
  [ "$(psql -X -qAt "$OLD" -c 'SELECT max(id) FROM orders')" -gt "$ORDERS" ] && break
  [ -e "$WORK/app/failed" ] && break
  sleep 0.1
done
[ "$(psql -X -qAt "$OLD" -c 'SELECT max(id) FROM orders')" -gt "$ORDERS" ] \
  || fail "the application's orders do not arrive: $(cat "$WORK"/app/seg*.out)"
record setup "application started" 0 "$t0" "$(now)" "$APP_RATE tx/s"

app_check() {
  if [ -e "$WORK/app/failed" ]; then
    local seg
    seg=$(head -n 1 "$WORK/app/failed")
    fail "the application saw an error ($seg): $(grep -m 3 -i 'error\|abort' "$WORK/app/$seg.out")"
  fi
}

verify() {
  local name=$1 t0 rc=0
  announce "verify: old and new hold the same rows" \
    "Range checksums on both sides at once, down to rows where they differ; rows written meanwhile are re-read before they count. Sequences are left to the write flip, which sets them." \
    "switchyard-reconciler verify --old \$OLD --new \$NEW --skip-sequences"
  t0=$(now)
  switchyard-reconciler verify --old "$OLD" --new "$NEW" --skip-sequences || rc=$?
  record verify "verify $name" "$rc" "$t0" "$(now)" "$([ "$rc" = 0 ] && echo equal || echo differences)"
  [ "$rc" = 0 ] || fail "verify $name found differences or failed (exit $rc)"
  app_check
}

# Until the application placed a few seconds' worth of orders since `since` (the highest
# order id then), so that every phase is verified with its own writes in it.
let_app_run() {
  local since=$1 want=$((APP_RATE * 2)) n=0
  for _ in $(seq 300); do
    n=$(psql -X -qAt "$PROXY" -c "SELECT count(*) FROM orders WHERE id > $since") || n=0
    [ "$n" -ge "$want" ] && return 0
    app_check
    sleep 0.1
  done
  fail "the application placed only $n orders in 30 s"
}

flip() {
  local to=$1 title=$2 why=$3 t0 rc=0 since
  announce "$title" "$why" "switchyard-proxy cutover $to --old \$OLD --new \$NEW --by demo"
  since=$(psql -X -qAt "$PROXY" -c "SELECT max(id) FROM orders")
  t0=$(now)
  switchyard-proxy cutover "$to" --old "$OLD" --new "$NEW" --by demo || rc=$?
  record flip "$title" "$rc" "$t0" "$(now)" "now $to"
  [ "$rc" = 0 ] || fail "the flip to $to was refused or failed (exit $rc)"
  let_app_run "$since"
  app_check
}

# --- 4. the backfill --------------------------------------------------------------------------
announce "4. The backfill: copy the rows that existed before" \
  "Key-range chunks, each checksummed on both sides and repaired while the application's dual writes go on; legacy_events has no key, so it is copied under a share lock on old (its writers would wait, readers not). Its rows/s are plotted on the dashboard." \
  "switchyard-backfill --old \$OLD --new \$NEW --lock-keyless --jobs 2 --chunk-rows $CHUNK_ROWS --progress-interval-secs 2"
t0=$(now)
rc=0
switchyard-backfill --old "$OLD" --new "$NEW" --lock-keyless --jobs 2 --chunk-rows "$CHUNK_ROWS" \
  --progress-interval-secs 2 || rc=$?
copied=$(psql -X -qAt "$NEW" -c "SELECT coalesce(sum(rows_copied), 0) FROM _switchyard.backfill_chunks" 2>/dev/null || echo "?")
record backfill "backfill" "$rc" "$t0" "$(now)" "$copied rows copied"
[ "$rc" = 0 ] || fail "the backfill did not finish cleanly (exit $rc)"
app_check
verify "after the backfill"

# --- 5. the cutover ---------------------------------------------------------------------------
flip reads-new "5. Cutover: reads-new" \
  "Autocommit reads go to new; writes stay on old, new follows. Checked first: every proxy alive, no confirmed shadow mismatch, retry log empty, nothing in doubt."
verify "in reads-new"
flip writes-new "6. Cutover: writes-new" \
  "New becomes the primary, old follows in lockstep. The proxy holds new transactions for a moment while running ones finish, sets new's sequences past old's, then moves every session: clients wait, none sees an error (the summary shows the longest wait)."
verify "in writes-new"
flip reads-new "7. Rollback: back to reads-new" \
  "Writes go back to old (its sequences set past new's); nothing written on new is lost, old followed every write."
verify "after the rollback"
flip writes-new "8. Forward again: writes-new" "New takes the writes again."
verify "in writes-new again"

# --- the summary ------------------------------------------------------------------------------
echo
echo "==> stopping the application (its current run ends within $APP_SEGMENT s)"
touch "$WORK/app.stop"
wait "$APP_PID" || true
APP_PID=
app_check
curl -fsS "http://127.0.0.1:$ADMIN_PORT/api/status" >"$WORK/status.json" || echo "{}" >"$WORK/status.json"
printf '\n%sSummary%s\n' "$BOLD" "$OFF"
python3 scripts/demo/summary.py "$WORK"
confirmed=$(python3 -c 'import json,sys; print(((json.load(open(sys.argv[1])).get("shadow") or {}).get("totals") or {}).get("confirmed", 0))' "$WORK/status.json")
[ "$confirmed" = 0 ] || fail "shadow reads confirmed $confirmed mismatch(es): see $DASHBOARD"
echo
echo "Not taken here: switchyard-proxy cutover done (final: detaches old; see docs/cutover.md)."

if [ "$MODE" = interactive ]; then
  cat <<TXT

The proxy and both databases still run (the application stopped):
  dashboard: $DASHBOARD
  connect:   psql "$PROXY"
  old:       psql "$OLD"
  new:       psql "$NEW"
  proxy log: $WORK/proxy.log
TXT
  read -r -p "[Enter] or Ctrl-C stops everything and removes the clusters " _ || true
else
  echo "demo $MODE run OK"
fi
