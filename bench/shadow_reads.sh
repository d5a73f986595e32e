#!/usr/bin/env bash
# bench/shadow_reads.sh: what shadow reads cost the client. pgbench select-only through
# switchyard-proxy with shadow sampling at 0%, 10% and 100%, at 4 and 16 clients: client
# p50/p99 latency and TPS side by side, and comparisons per second (from /api/status).
#
#   SCALE=10 DURATION=15 bench/shadow_reads.sh
#
# Starts two throwaway clusters, both initialised with `pgbench -i -s SCALE` (the same data,
# so every comparison should match), and one proxy per rate with
# `--mirror-mode off --shadow-sample-rate RATE` (0 = shadow reads off); each round measures
# every rate, in an order that rotates from round to round. Per-transaction
# latencies come from pgbench's transaction log (-l). Prints a Markdown table on stdout.
#
# Environment (defaults in brackets):
#   SCALE [10]  DURATION [15]  CLIENTS ["4 16"]  RATES ["0 0.1 1"]  MODE [prepared]
#   WARMUP [5]  ROUNDS [1] (rates rotate within a round; the table shows medians)
#   RUN_QUIET_WAIT [20] (seconds to wait for <10% CPU before each run)
#   SHADOW_ARGS [""] extra proxy flags;  KEEP_WORK [0]  PROXY_BIN, PGBENCH, PSQL, PG_BIN
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-"4 16"}
RATES=${RATES:-"0 0.1 1"}
MODE=${MODE:-prepared}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-1}
DB=bench
read -r -a EXTRA <<<"${SHADOW_ARGS:-}"

bench_init shadow-reads
RUNS=$BENCH_WORK/runs
mkdir -p "$RUNS"

pg_settings=(shared_buffers=256MB max_connections=100 fsync=off synchronous_commit=off
  full_page_writes=off)
free_port P_OLD
free_port P_NEW
log "starting the old and new clusters on ports $P_OLD and $P_NEW"
start_cluster old "$P_OLD" "${pg_settings[@]}"
start_cluster new "$P_NEW" "${pg_settings[@]}"
for p in "$P_OLD" "$P_NEW"; do
  psql_at "$p" postgres -c "CREATE DATABASE $DB"
  "$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$p" -U postgres "$DB" >"$BENCH_WORK/init-$p.log" 2>&1 \
    || { cat "$BENCH_WORK/init-$p.log" >&2; die "pgbench -i failed on port $p"; }
done

# shadow_totals ADMIN_PORT: "sampled matched dropped" from /api/status (zeros when off).
shadow_totals() {
  curl -fsS "http://127.0.0.1:$1/api/status" | python3 -c '
import json, sys
s = json.load(sys.stdin).get("shadow") or {}
t, q = s.get("totals", {}), s.get("queue", {})
print(t.get("sampled", 0), t.get("matched", 0), q.get("dropped", 0), t.get("confirmed", 0))'
}

# percentiles LOGFILES...: "p50 p99" in ms from pgbench transaction logs (3rd field: us).
percentiles() {
  cat "$@" | awk '{print $3}' | sort -n | awk '{v[NR] = $1} END {
    if (NR == 0) {print "- -"; exit}
    i50 = int(0.50 * NR); if (i50 < 1) i50 = 1
    i99 = int(0.99 * NR); if (i99 < 1) i99 = 1
    printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000}'
}

RESULTS=$BENCH_WORK/results.tsv
: >"$RESULTS"
# One proxy per rate, all started up front, so rounds can rotate through them: drift in
# the machine's load then spreads over every rate instead of landing on one.
declare -A SY_PORT=() ADM_PORT=()
for rate in $RATES; do
  free_port P_SY
  free_port P_ADM
  SY_PORT[$rate]=$P_SY
  ADM_PORT[$rate]=$P_ADM
  args=(--mirror-mode off)
  [ "$rate" != 0 ] && args+=(--shadow-sample-rate "$rate")
  log "switchyard-proxy with shadow sample rate $rate on port $P_SY"
  start_switchyard "sy$rate" "$P_SY" "$P_ADM" old new "$DB" "${args[@]}" "${EXTRA[@]}"
  run_pgbench "$RUNS/warmup-$rate.out" -n -S -M "$MODE" -c 4 -j 2 -T "$WARMUP" \
    -h 127.0.0.1 -p "$P_SY" -U postgres "$DB" || die "warm-up: $BENCH_LAST_ERROR"
done

read -r -a RATE_LIST <<<"$RATES"
for ((round = 1; round <= ROUNDS; round++)); do
  for c in $CLIENTS; do
    for ((k = 0; k < ${#RATE_LIST[@]}; k++)); do
      rate=${RATE_LIST[$(((k + round - 1) % ${#RATE_LIST[@]}))]}
      wait_for_quiet "${RUN_QUIET_WAIT:-20}" 10 1 >/dev/null || warn "machine busy: measuring anyway"
      dir=$RUNS/round$round-r$rate-c$c
      mkdir -p "$dir"
      read -r s0 m0 d0 _ < <(shadow_totals "${ADM_PORT[$rate]}")
      cpu0=$(_stat_ticks "${BENCH_PID[sy$rate]}" 0)
      (cd "$dir" && run_pgbench "$dir/pgbench.out" -n -S -M "$MODE" -c "$c" -j "$(pgbench_threads "$c")" \
        -T "$DURATION" -l --log-prefix=tx -h 127.0.0.1 -p "${SY_PORT[$rate]}" -U postgres "$DB") \
        || die "rate $rate c=$c: $BENCH_LAST_ERROR"
      # Let queued comparisons finish before reading the counters.
      sleep 2
      read -r s1 m1 d1 conf < <(shadow_totals "${ADM_PORT[$rate]}")
      # The proxy's own CPU over the run (and the 2 s after), in % of one core.
      pcpu=$(awk -v d=$(($(_stat_ticks "${BENCH_PID[sy$rate]}" 0) - cpu0)) -v s="$((DURATION + 2))" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", 100 * d / (s * hz)}')
      read -r p50 p99 < <(percentiles "$dir"/tx.*)
      tps=$(pgbench_tps "$dir/pgbench.out")
      cps=$(awk -v a="$s0" -v b="$s1" -v d="$DURATION" 'BEGIN {printf "%.0f", (b - a) / d}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rate" "$c" "$tps" "$p50" "$p99" "$cps" \
        "$((m1 - m0))" "$((d1 - d0))" "$conf" "$round" "$pcpu" >>"$RESULTS"
      log "$(printf 'round %s rate %-4s c=%-3s %9.1f tps  p50 %s ms  p99 %s ms  %s comparisons/s  dropped %s  proxy CPU %s%%' \
        "$round" "$rate" "$c" "$tps" "$p50" "$p99" "$cps" "$((d1 - d0))" "$pcpu")"
    done
  done
done

echo "pgbench -S -M $MODE, scale $SCALE, ${DURATION} s per run, $ROUNDS round(s) (median per cell); $(machine_summary)"
echo "proxy: $PROXY_BIN ($(binary_summary "$PROXY_BIN"))"
echo
echo "| sample rate | clients | TPS | p50 ms | p99 ms | comparisons/s | matched | dropped | confirmed |"
echo "|---|---|---|---|---|---|---|---|---|"
# Median of TPS, p50, p99 and comparisons/s per (rate, clients); counts summed over rounds.
sort -k2,2n -k1,1g "$RESULTS" | python3 -c '
import sys, statistics
cells = {}
for line in sys.stdin:
    f = line.rstrip("\n").split("\t")
    cells.setdefault((f[0], f[1]), []).append(f)
def med(rows, i):
    return statistics.median(float(r[i]) for r in rows)
for (rate, c), rows in sorted(cells.items(), key=lambda kv: (int(kv[0][1]), float(kv[0][0]))):
    print("| %s | %s | %.0f | %.3f | %.3f | %.0f | %d | %d | %s |" % (rate, c, med(rows, 2), med(rows, 3),
          med(rows, 4), med(rows, 5), sum(int(r[6]) for r in rows), sum(int(r[7]) for r in rows), rows[-1][8]))'
echo
echo "Per run (round, rate, clients, TPS, p99 ms, proxy CPU % of one core):"
awk -F'\t' '{printf "- round %s, rate %s, %s clients: %.0f TPS, p99 %s ms, proxy CPU %s%%\n", $10, $1, $2, $3, $5, $11}' "$RESULTS"
