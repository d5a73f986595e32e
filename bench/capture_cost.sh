#!/usr/bin/env bash
# bench/capture_cost.sh: what change capture costs the old database per transaction, and
# what other ways of capturing would cost, side by side in one run.
#
#   PROXY_BIN=.../switchyard-proxy bench/capture_cost.sh            # ~3 min
#   TIMED=1 PROXY_BIN=.../switchyard-proxy bench/capture_cost.sh    # + pgbench timings
#
# The proxy is started once, only to install capture on old (it needs a new database too).
# Then pgbench's tpcb-like transaction runs on old itself (no proxy in the path), as:
#   off       the capture triggers disabled: the application alone;
#   skipped   the triggers fire and return at once (`switchyard.apply = on`, what the
#             proxy's appliers set): the price of having them installed;
#   capture   what a proxy session makes old do today: the transaction claimed for lockstep
#             capture (`SET LOCAL switchyard.capture = lockstep`), the triggers writing each
#             statement's images to `_switchyard.capture_lockstep`, one drain before COMMIT;
#   lean      the same table and drain from trigger functions stripped to the applier check
#             (bench/capture_variants/lean.sql);
#   notices   images sent to the session as INFO messages, a counter read before COMMIT
#             instead of the drain (bench/capture_variants/notices.sql).
# Instructions: N transactions with fixed random keys in single-user mode (one backend)
# under callgrind, minus the same run with none: instructions per transaction, the same
# from run to run whatever else the machine does. TIMED=1 adds one pgbench client per
# variant (-M prepared, DURATION s, ROUNDS rounds alternating): median latency and old's
# CPU per transaction, which on a shared 2-core machine move by tens of percent.
# Environment: N [200], TIMED [0], SCALE [10], DURATION [8], ROUNDS [3], PROXY_BIN,
# PG_BIN, PGBENCH, PSQL; valgrind on the PATH.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-200}
SCALE=${SCALE:-10}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
DB=bench
VARIANTS_DIR=$BENCH_ROOT/bench/capture_variants
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
bench_init capture_cost
start_pgbench_pair "$DB" "$SCALE" "$DURABLE"
free_port P_SY
free_port P_ADM
log "installing capture on old (the proxy starts, then stops)"
start_switchyard sy "$P_SY" "$P_ADM" old new "$DB"
stop_switchyard sy
W=$BENCH_WORK
psql_at "$P_OLD" "$DB" -At -c "SELECT pg_get_functiondef(p.oid) || ';' FROM pg_proc p
  WHERE p.pronamespace = '_switchyard'::regnamespace AND p.proname IN ('capture_insert', 'capture_update')" \
  >"$W/installed.sql"
triggers_sql() { # "DISABLE TRIGGER" | "ENABLE ALWAYS TRIGGER"
  echo "DO \$\$ DECLARE r record; BEGIN
    FOR r IN SELECT t.tgrelid::regclass AS rel, t.tgname FROM pg_trigger t WHERE t.tgname LIKE 'switchyard_capture_%' LOOP
      EXECUTE format('ALTER TABLE %s $1 %I', r.rel, r.tgname);
    END LOOP; END \$\$;"
}
DRAIN="SELECT xid::text, seq, relid, version, op, rows::text FROM _switchyard.drain(32);"
COUNTER="SELECT pg_catalog.current_setting('switchyard.captured', true);"
CLAIM="SET LOCAL switchyard.capture = lockstep;"
# Per variant: the SQL that sets it up, the statement after BEGIN, the one before COMMIT.
declare -A SETUP=([off]="$(triggers_sql "DISABLE TRIGGER")" [skipped]="" [capture]=""
  [lean]="$(cat "$VARIANTS_DIR/lean.sql")" [notices]="$(cat "$VARIANTS_DIR/notices.sql")")
declare -A FIRST=([off]="" [skipped]="SET LOCAL switchyard.apply = on;" [capture]="$CLAIM" [lean]="$CLAIM" [notices]="$CLAIM")
declare -A LAST=([off]="" [skipped]="" [capture]="$DRAIN" [lean]="$DRAIN" [notices]="$COUNTER")
VARIANTS="off skipped capture lean notices"
RESET="$(triggers_sql "ENABLE ALWAYS TRIGGER")
$(cat "$W/installed.sql")"

# ---------------------------------------------------------------- instructions
DIR=$(cluster_dir old)
as_pg "$PG_BIN/pg_ctl" -D "$DIR" -m fast -w stop >/dev/null
python3 - "$N" "$SCALE" >"$W/tx.sql" <<'PY'
import random, sys
n, scale = int(sys.argv[1]), int(sys.argv[2])
random.seed(7)
for _ in range(n + 20):
    aid, tid = random.randint(1, 100000 * scale), random.randint(1, 10 * scale)
    bid, d = random.randint(1, scale), random.randint(-5000, 5000)
    print(f"""BEGIN;
-- FIRST
UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {aid};
SELECT abalance FROM pgbench_accounts WHERE aid = {aid};
UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {tid};
UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {bid};
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {d}, CURRENT_TIMESTAMP);
-- LAST
END;""")
PY
single_user_instructions() { # FILE
  as_pg valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$PG_BIN/postgres" --single -j -D "$DIR" "$DB" <"$1" 2>&1 >/dev/null | awk '/Collected/ {print $4}'
}
declare -A INSTR
for v in $VARIANTS; do
  log "instructions: $v"
  # 20 transactions warm plans and caches in both runs; the difference is N transactions.
  { printf '%s\n' "$RESET" "${SETUP[$v]}"
    sed -e "s|^-- FIRST$|${FIRST[$v]}|" -e "s|^-- LAST$|${LAST[$v]}|" "$W/tx.sql"; } >"$W/$v.all"
  lines=$(wc -l <"$W/$v.all")
  head -n $((lines - 9 * N)) "$W/$v.all" >"$W/$v.none"
  chmod 644 "$W/$v.all" "$W/$v.none"
  a=$(single_user_instructions "$W/$v.none")
  b=$(single_user_instructions "$W/$v.all")
  INSTR[$v]=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN {printf "%.0f", (b - a) / n / 1000}')
done
printf '%s\n' "$RESET" >"$W/reset.sql"; chmod 644 "$W/reset.sql"
single_user_instructions "$W/reset.sql" >/dev/null
_pg_ctl_start old

# ---------------------------------------------------------------- timings (TIMED=1)
declare -A LAT CPU
if [ "${TIMED:-0}" = 1 ]; then
  for v in $VARIANTS; do
    { echo '\set aid random(1, 100000 * :scale)'; echo '\set bid random(1, 1 * :scale)'
      echo '\set tid random(1, 10 * :scale)'; echo '\set delta random(-5000, 5000)'
      sed -n '1,9p' "$W/tx.sql" | sed -e "s|^-- FIRST$|${FIRST[$v]}|" -e "s|^-- LAST$|${LAST[$v]}|" \
        -e 's/abalance + -\?[0-9]*/abalance + :delta/; s/tbalance + -\?[0-9]*/tbalance + :delta/' \
        -e 's/bbalance + -\?[0-9]*/bbalance + :delta/; s/aid = [0-9]*/aid = :aid/g; s/tid = [0-9]*/tid = :tid/; s/bid = [0-9]*/bid = :bid/' \
        -e 's/VALUES ([^)]*CURRENT_TIMESTAMP)/VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP)/'; } >"$W/$v.pgbench"
  done
  run() { # VARIANT
    local t0 t1 out n
    psql_at "$P_OLD" "$DB" -c "$RESET" -c "${SETUP[$1]:-SELECT 1}" >/dev/null
    # One unmeasured second first: plans and caches after the ALTERs and CREATEs above.
    "$PGBENCH" -n -c 1 -T 1 -M prepared -f "$W/$1.pgbench" -h 127.0.0.1 -p "$P_OLD" -U postgres "$DB" >/dev/null 2>&1 \
      || die "pgbench ($1) failed"
    t0=$(proc_ticks "$(postmaster_pid old)")
    out=$("$PGBENCH" -n -c 1 -T "$DURATION" -M prepared -f "$W/$1.pgbench" -h 127.0.0.1 -p "$P_OLD" -U postgres "$DB" 2>/dev/null) \
      || die "pgbench ($1) failed"
    # pgbench's backend counts once the postmaster has reaped it.
    for _ in $(seq 100); do
      ps -o args= --ppid "$(postmaster_pid old)" | grep -q "postgres $DB " || break
      sleep 0.05
    done
    t1=$(proc_ticks "$(postmaster_pid old)")
    n=$(awk -F': ' '/actually processed/ {split($2, a, "/"); print a[1]}' <<<"$out")
    LAT[$1]+="$(awk '/^latency average/ {print $4}' <<<"$out") "
    CPU[$1]+="$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {printf "%.3f", 1000 * t / hz / n}') "
  }
  for r in $(seq "$ROUNDS"); do
    log "timings: round $r of $ROUNDS"
    for v in $VARIANTS; do run "$v"; done
  done
  psql_at "$P_OLD" "$DB" -c "$RESET" >/dev/null
fi
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]; else print "-"}'; }

printf '\n%-10s %18s %12s %16s\n' variant "k instructions/txn" "/ off" "latency, CPU (ms)"
for v in $VARIANTS; do
  printf '%-10s %18s %12s %16s\n' "$v" "${INSTR[$v]}" \
    "$(awk -v a="${INSTR[$v]}" -v b="${INSTR[off]}" 'BEGIN {printf "%.2f", a / b}')" \
    "$(median "${LAT[$v]:-}"), $(median "${CPU[$v]:-}")"
done
