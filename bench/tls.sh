#!/usr/bin/env bash
# bench/tls.sh: the proxy with its database connections over TLS beside plain TCP, in one
# run: pgbench select-only in passthrough (--mirror-mode off) and tpcb-like with dual
# writes (two-phase), each through a proxy whose URLs say sslmode=disable and one whose
# URLs say sslmode=require, rounds alternating, medians printed side by side.
#
#   SCALE=10 DURATION=15 ROUNDS=3 bench/tls.sh
#
# Environment (defaults in brackets): SCALE [10]  DURATION [15]  ROUNDS [3]  CLIENTS [8]
#   MODE [prepared] (pgbench -M)  QUIET_WAIT [60]  PROXY_BIN  PG_BIN  KEEP_WORK [0]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
MODE=${MODE:-prepared}
QUIET_WAIT=${QUIET_WAIT:-60}
DB=bench

bench_init tls
start_pgbench_pair "$DB" "$SCALE" async
enable_tls old
enable_tls new
RAW=$BENCH_WORK/raw.tsv
: >"$RAW"

# measure WORKLOAD SSLMODE ROUND: one pgbench run through a fresh proxy.
measure() {
  local workload=$1 sslmode=$2 round=$3 args=() extra=() out busy
  case $workload in
    passthrough) args=(-S); extra=(--mirror-mode off) ;;
    dual-writes) args=(); extra=(--mirror-mode two-phase) ;;
  esac
  free_port P_SY; free_port P_ADM
  DB_URL_PARAMS="?sslmode=$sslmode" start_switchyard "sy-$workload-$sslmode-$round" "$P_SY" "$P_ADM" old new "$DB" "${extra[@]}"
  out=$BENCH_WORK/$workload-$sslmode-$round.out
  run_pgbench "$out.warm" -h 127.0.0.1 -p "$P_SY" -U postgres -M "$MODE" -c "$CLIENTS" -j 2 -T 3 "${args[@]}" "$DB" ||
    die "warm-up $workload $sslmode: $BENCH_LAST_ERROR"
  busy=$(wait_for_quiet "$QUIET_WAIT" 10 2) || warn "machine still ${busy}% busy"
  # Halfway through, count the sessions on old that are on TLS: the proxy's backends are
  # really encrypted (or really not).
  (sleep "$((DURATION / 2))"; psql_at "$P_OLD" postgres -At -c "SELECT count(*) FILTER (WHERE s.ssl) || ' of ' || count(*)
     FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '$DB' AND a.client_addr IS NOT NULL" >"$out.ssl") &
  local probe=$!
  run_pgbench "$out" -h 127.0.0.1 -p "$P_SY" -U postgres -M "$MODE" -c "$CLIENTS" -j 2 -T "$DURATION" "${args[@]}" "$DB" ||
    die "$workload $sslmode: $BENCH_LAST_ERROR"
  wait "$probe" || true
  local on
  on=$(cat "$out.ssl")
  printf '%s\t%s\t%s\t%s\n' "$workload" "$sslmode" "$(pgbench_tps "$out")" "$(awk '/latency average/ {print $4; exit}' "$out")" >>"$RAW"
  log "$workload sslmode=$sslmode round $round: $(pgbench_tps "$out") TPS (sessions on old on TLS mid-run: $on)"
  stop_switchyard "sy-$workload-$sslmode-$round"
}

for round in $(seq "$ROUNDS"); do
  for workload in passthrough dual-writes; do
    # Alternate which goes first, so neither always runs on a warmer machine.
    if [ $((round % 2)) = 1 ]; then order=(disable require); else order=(require disable); fi
    for sslmode in "${order[@]}"; do measure "$workload" "$sslmode" "$round"; done
  done
done

python3 - "$RAW" "$CLIENTS" "$MODE" "$DURATION" "$ROUNDS" <<'PY'
import statistics, sys
raw, clients, mode, duration, rounds = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(raw) if l.strip()]
print(f"pgbench -c {clients} -M {mode} -T {duration}, {rounds} rounds, medians")
print("| workload | plain TCP TPS | TLS (require) TPS | TLS / plain | plain latency ms | TLS latency ms |")
print("|---|---:|---:|---:|---:|---:|")
for w in ("passthrough", "dual-writes"):
    tps = {m: statistics.median(float(r[2]) for r in rows if r[0] == w and r[1] == m) for m in ("disable", "require")}
    lat = {m: statistics.median(float(r[3]) for r in rows if r[0] == w and r[1] == m) for m in ("disable", "require")}
    label = "select-only, passthrough" if w == "passthrough" else "tpcb-like, dual writes (two-phase)"
    print(f"| {label} | {tps['disable']:.0f} | {tps['require']:.0f} | {tps['require']/tps['disable']:.2f} | {lat['disable']:.2f} | {lat['require']:.2f} |")
PY
