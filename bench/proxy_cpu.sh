#!/usr/bin/env bash
# bench/proxy_cpu.sh: CPU time per transaction of PgBouncer and switchyard-proxy, side by
# side, with TPS and latency, on pgbench select-only. On a 2-core box where pgbench, the
# server and the proxy share the cores, a proxy's TPS at 8+ clients mostly shows how much
# CPU it takes from the others; this prints that figure directly (utime + stime of the
# proxy process over the run, divided by the transactions), which varies far less from
# run to run than TPS does. RSS is each process's resident memory after its run (nobody
# scrapes the proxy's /metrics meanwhile: it must stay flat from run to run).
#
#   cargo build --release -p switchyard-proxy
#   bench/proxy_cpu.sh                       # ~3 min
#
# Targets: direct, PgBouncer (session mode), switchyard-proxy with one worker thread
# (`--worker-threads 1`: a current-thread runtime) and with the default (one per core).
# Environment: SCALE [10] DURATION [8] CLIENTS ["1 8"] MODES ["prepared simple"]
# ROUNDS [2]; binaries as in bench/lib.sh (PROXY_BIN defaults to target/release).
# After the runs it prints, per mode and client count, the medians over the rounds of each
# target's added latency against direct, its TPS against PgBouncer's, and its CPU per
# transaction, each round compared with the same round's direct and PgBouncer runs.
# PROXY_BIN_B: a second proxy binary (e.g. before a change) measured in the same run, as
# the targets switchyard-1-b and switchyard-b.
# WITH_MIRROR=1: one more target, switchyard-mirror: default threads with dual writes
# (two-phase) and shadow reads (SHADOW_RATE [0.001] of reads sampled) switched on; the
# select-only reads it serves are the statements those features do not touch.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-"1 8"}
MODES=${MODES:-"prepared simple"}
ROUNDS=${ROUNDS:-2}

bench_init proxy-cpu
start_pgbench_pair bench "$SCALE" 0
free_port P_PGB; start_pgbouncer pgb "$P_PGB" "$(cluster_port old)" bench 40
free_port P_S1; free_port P_A1
start_switchyard sy1 "$P_S1" "$P_A1" old new bench --worker-threads 1 --mirror-mode off
free_port P_SN; free_port P_AN
start_switchyard syN "$P_SN" "$P_AN" old new bench --mirror-mode off

declare -A PID=([pgbouncer]=${BENCH_PID[pgb]} [switchyard-1]=${BENCH_PID[sy1]} [switchyard]=${BENCH_PID[syN]})
declare -A PORT=([direct]=$P_OLD [pgbouncer]=$P_PGB [switchyard-1]=$P_S1 [switchyard]=$P_SN)
TARGETS="direct pgbouncer switchyard-1 switchyard"
if [ -n "${WITH_MIRROR:-}" ]; then
  free_port P_SM; free_port P_AM
  start_switchyard sym "$P_SM" "$P_AM" old new bench --mirror-mode two-phase \
    --shadow-sample-rate "${SHADOW_RATE:-0.001}"
  PID[switchyard-mirror]=${BENCH_PID[sym]}; PORT[switchyard-mirror]=$P_SM
  TARGETS="$TARGETS switchyard-mirror"
fi
if [ -n "${PROXY_BIN_B:-}" ]; then
  PROXY_BIN=$PROXY_BIN_B
  free_port P_S1B; free_port P_A1B
  start_switchyard sy1b "$P_S1B" "$P_A1B" old new bench --worker-threads 1 --mirror-mode off
  free_port P_SNB; free_port P_ANB
  start_switchyard syNb "$P_SNB" "$P_ANB" old new bench --mirror-mode off
  PID[switchyard-1-b]=${BENCH_PID[sy1b]}; PORT[switchyard-1-b]=$P_S1B
  PID[switchyard-b]=${BENCH_PID[syNb]}; PORT[switchyard-b]=$P_SNB
  TARGETS="$TARGETS switchyard-1-b switchyard-b"
fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

printf '%-6s %-9s %7s %-15s %9s %9s %14s %8s\n' round mode clients target tps "lat ms" "CPU us/txn" "RSS MiB"
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        p=${PID[$t]:-}
        t0=0
        [ -n "$p" ] && t0=$(ticks "$p")
        out=$BENCH_WORK/$t-$mode-$c-$round.out
        run_pgbench "$out" -n -S -M "$mode" -c "$c" -j $((c < 2 ? c : 2)) -T "$DURATION" \
          -h 127.0.0.1 -p "${PORT[$t]}" -U postgres bench || die "$t: $BENCH_LAST_ERROR"
        n=$(pgbench_transactions "$out")
        cpu=-
        [ -n "$p" ] && cpu=$(awk -v d=$(($(ticks "$p") - t0)) -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", d * 1e6 / hz / n}')
        rss=-
        [ -n "$p" ] && rss=$(awk -v k="$(rss_kib "$p")" 'BEGIN {printf "%.1f", k / 1024}')
        printf '%-6s %-9s %7s %-15s %9.0f %9s %14s %8s\n' "$round" "$mode" "$c" "$t" \
          "$(pgbench_tps "$out")" "$(pgbench_latency_ms "$out")" "$cpu" "$rss" | tee -a "$BENCH_WORK/rows.txt"
      done
    done
  done
done

# Medians over the rounds, each round's figures taken against the same round's direct and
# PgBouncer runs (the machine's speed drifts between rounds more than between targets).
echo
python3 - "$BENCH_WORK/rows.txt" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, mode, c, t, tps, lat, cpu, rss = line.split()
    runs[(mode, int(c), r)][t] = (float(tps), float(lat), cpu)
cells = collections.defaultdict(lambda: collections.defaultdict(list))
for (mode, c, r), by in runs.items():
    for t, (tps, lat, cpu) in by.items():
        if "direct" in by and t != "direct":
            cells[(mode, c)][(t, "added us")].append((lat - by["direct"][1]) * 1000)
        if "pgbouncer" in by and t not in ("direct", "pgbouncer"):
            cells[(mode, c)][(t, "TPS / PgB")].append(tps / by["pgbouncer"][0])
        if cpu != "-":
            cells[(mode, c)][(t, "CPU us/txn")].append(float(cpu))
print("medians over %d round(s) (min-max in brackets)" % len({k[2] for k in runs}))
print("%-9s %7s %-15s %-12s %s" % ("mode", "clients", "target", "figure", "median [min-max]"))
for (mode, c) in sorted(cells):
    for (t, what), xs in sorted(cells[(mode, c)].items()):
        fmt = "%.2f" if what.startswith("TPS") else "%.1f"
        print("%-9s %7d %-15s %-12s %s [%s-%s]" % (mode, c, t, what, fmt % statistics.median(xs),
              fmt % min(xs), fmt % max(xs)))
PY
