#!/usr/bin/env bash
# bench/dual_writes.sh: pgbench tpcb-like through switchyard-proxy with dual writes
# (two-phase mode) side by side with the old database alone, and retry-log replay speed.
#
#   SCALE=10 DURATION=15 bench/dual_writes.sh
#
# Two throwaway clusters ("old" and "new", both `pgbench -i -s SCALE`, identical data,
# max_prepared_transactions set on new), and the proxy in front. Measures, in one run:
#   1 client:  latency direct to old, direct to new, and through the proxy; the target is
#              proxy <= 1.25 x (old + new) (a dual write does the work on both databases);
#   8 clients: TPS direct to old vs through the proxy;
#   replay:    new stopped, the proxy runs the 8-client load for REPLAY_SECS (every write
#              queued in the retry log), new started, `switchyard-reconciler replay`
#              timed: records/s vs the dual-write TPS (target: >= 2x);
#   memory:    the proxy's peak RSS while one UPDATE of every pgbench_accounts row streams
#              through (bounded memory for large statements).
# Prints a table on stdout. Environment: SCALE [10], DURATION [15], MODE [prepared],
# REPLAY_SECS [10], DURABLE [0], SECTIONS ["latency replay memory"], PROXY_BIN,
# RECONCILER_BIN, PG_BIN, PGBENCH, PSQL.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
MODE=${MODE:-prepared}
REPLAY_SECS=${REPLAY_SECS:-10}
DURABLE=${DURABLE:-0}
SECTIONS=${SECTIONS:-"latency replay memory"}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
l_old=- l_new=- l_sy=- t_old=- t_sy=- t_queue=- records=- replay_s=- replay_rps=- rss_before=- peak=-
RECONCILER_BIN=${RECONCILER_BIN:-$BENCH_ROOT/target/release/switchyard-reconciler}
DB=bench

[ -x "$RECONCILER_BIN" ] || die "$RECONCILER_BIN not found: cargo build --release -p switchyard-reconciler"
bench_init dual_writes

start_pgbench_pair "$DB" "$SCALE" "$DURABLE"
for p in "$P_OLD" "$P_NEW"; do
  psql_at "$p" "$DB" -c "CHECKPOINT"
done
free_port P_SY
free_port P_ADM
start_switchyard sy "$P_SY" "$P_ADM" old new "$DB"

bench() { # NAME PORT CLIENTS SECONDS
  local out="$BENCH_WORK/$1.out"
  run_pgbench "$out" -h 127.0.0.1 -p "$2" -U postgres -n -M "$MODE" -c "$3" -j "$3" -T "$4" "$DB" \
    || die "$1: $BENCH_LAST_ERROR"
  echo "$out"
}

if has latency; then
  log "warm-up"
  bench warm-old "$P_OLD" 4 5 >/dev/null
  bench warm-new "$P_NEW" 4 5 >/dev/null
  bench warm-sy "$P_SY" 4 5 >/dev/null
  log "1 client, $DURATION s each"
  l_old=$(pgbench_latency_ms "$(bench c1-old "$P_OLD" 1 "$DURATION")")
  l_new=$(pgbench_latency_ms "$(bench c1-new "$P_NEW" 1 "$DURATION")")
  l_sy=$(pgbench_latency_ms "$(bench c1-sy "$P_SY" 1 "$DURATION")")
  log "8 clients, $DURATION s each"
  t_old=$(pgbench_tps "$(bench c8-old "$P_OLD" 8 "$DURATION")")
  t_sy=$(pgbench_tps "$(bench c8-sy "$P_SY" 8 "$DURATION")")
fi

if has replay; then
  log "replay: new stopped, $REPLAY_SECS s of load queued"
  as_pg "$PG_BIN/pg_ctl" -D "$(cluster_dir new)" -m fast -w stop >/dev/null
  psql_at "$P_OLD" "$DB" -c "DELETE FROM _switchyard.retry_log" >/dev/null
  q_out=$(bench queue-sy "$P_SY" 8 "$REPLAY_SECS")
  t_queue=$(pgbench_tps "$q_out")
  records=$(psql_at "$P_OLD" "$DB" -At -c "SELECT count(*) FROM _switchyard.retry_log")
  _pg_ctl_start new
  # In-doubt transactions from the moment new stopped are not part of the measurement.
  "$RECONCILER_BIN" recover --old "postgres://postgres@127.0.0.1:$P_OLD/$DB" \
    --new "postgres://postgres@127.0.0.1:$P_NEW/$DB" --min-age-secs 0 >/dev/null
  t0=$(date +%s.%N)
  "$RECONCILER_BIN" replay --old "postgres://postgres@127.0.0.1:$P_OLD/$DB" \
    --new "postgres://postgres@127.0.0.1:$P_NEW/$DB" >"$BENCH_WORK/replay.out" 2>&1 \
    || { cat "$BENCH_WORK/replay.out" >&2; die "replay failed"; }
  replay_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
  replay_rps=$(awk -v n="$records" -v s="$replay_s" 'BEGIN {printf "%.0f", n / s}')
fi

if has memory; then
  log "memory: one UPDATE of every pgbench_accounts row through the proxy"
  sy_pid=${BENCH_PID[sy]}
  rss_before=$(rss_kib "$sy_pid")
  peak=$rss_before
  psql_at "$P_SY" "$DB" -c "UPDATE pgbench_accounts SET abalance = abalance + 1" >/dev/null &
  upd=$!
  while kill -0 "$upd" 2>/dev/null; do
    r=$(rss_kib "$sy_pid" || echo 0)
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
  done
  wait "$upd" || die "the large UPDATE failed"
fi
rows=$((SCALE * 100000))

echo "machine: $(machine_summary); scale $SCALE, -M $MODE, ${DURATION}s runs, durable=$DURABLE"
printf '%-44s %12s\n' "measure" "value"
printf '%-44s %12s\n' "1-client latency, old direct (ms)" "$l_old"
printf '%-44s %12s\n' "1-client latency, new direct (ms)" "$l_new"
printf '%-44s %12s\n' "1-client latency, through proxy (ms)" "$l_sy"
printf '%-44s %12s\n' "proxy / (old + new)  [target <= 1.25]" "$(awk -v s="$l_sy" -v a="$l_old" -v b="$l_new" 'BEGIN {if (a + b > 0) printf "%.2f", s / (a + b); else print "-"}')"
printf '%-44s %12s\n' "8-client TPS, old direct" "$t_old"
printf '%-44s %12s\n' "8-client TPS, through proxy" "$t_sy"
printf '%-44s %12s\n' "proxy / direct TPS" "$(awk -v s="$t_sy" -v a="$t_old" 'BEGIN {if (a > 0) printf "%.2f", s / a; else print "-"}')"
printf '%-44s %12s\n' "8-client TPS while new was down (queued)" "$t_queue"
printf '%-44s %12s\n' "retry records queued" "$records"
printf '%-44s %12s\n' "replay time (s)" "$replay_s"
printf '%-44s %12s\n' "replay records/s" "$replay_rps"
printf '%-44s %12s\n' "replay / dual-write TPS  [target >= 2]" "$(awk -v r="$replay_rps" -v t="$t_sy" 'BEGIN {if (t > 0) printf "%.2f", r / t; else print "-"}')"
printf '%-44s %12s\n' "proxy RSS before large UPDATE (KiB)" "$rss_before"
printf '%-44s %12s\n' "proxy peak RSS during UPDATE of $rows rows" "$peak"
