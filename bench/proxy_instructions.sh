#!/usr/bin/env bash
# bench/proxy_instructions.sh: user-space instructions per transaction of PgBouncer and
# switchyard-proxy, side by side, counted by callgrind on pgbench select-only. Unlike the
# wall-clock CPU of bench/proxy_cpu.sh, the counts do not move with whatever else the
# machine runs, so changes of a few percent can be ranked on a busy box. They leave out
# the kernel (system calls, wake-ups), which is most of a proxy's CPU: read them beside
# proxy_cpu.sh's figures, not instead.
#
#   cargo build --release -p switchyard-proxy
#   bench/proxy_instructions.sh              # ~5 min
#
# Each target runs under callgrind twice per mode, with TXNS and 2 x TXNS transactions per
# client; the difference over the extra transactions is what one transaction costs, free of
# start-up (connections, the metrics clock's calibration) and shutdown.
# Targets: pgbouncer (session mode), switchyard (`--worker-threads 1`, passthrough),
# switchyard-mirror (the same with dual writes, two-phase, and shadow reads at SHADOW_RATE
# [0.001]: the reads are statements those features do not touch), and with PROXY_BIN_B a
# second proxy binary as switchyard-b / switchyard-mirror-b.
# Environment: SCALE [10] CLIENTS [8] TXNS [600] MODES ["simple extended prepared"]
# TARGETS [all of the above]; binaries as in bench/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
TXNS=${TXNS:-600}
MODES=${MODES:-"simple extended prepared"}
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"

bench_init proxy-instructions
start_pgbench_pair bench "$SCALE" 0
PROXY_A=$PROXY_BIN
TARGETS=${TARGETS:-"pgbouncer switchyard switchyard-mirror${PROXY_BIN_B:+ switchyard-b switchyard-mirror-b}"}

# A wrapper that runs BIN under callgrind writing to OUT; the pid stays the wrapped one.
wrap() {
  local bin=$1 out=$2 w
  w=$BENCH_WORK/wrap-$RANDOM-$RANDOM.sh
  # Written by PgBouncer as postgres, after dropping root.
  chmod 777 "$(dirname "$out")"
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=%s %s "$@"\n' "$out" "$bin" >"$w"
  chmod 755 "$w"
  echo "$w"
}

# Instructions (Ir) of the busiest thread of a run (callgrind writes a file per thread,
# OUT-01, OUT-02...): the session thread of a proxy started with one, PgBouncer's only one.
# The proxy's other threads run its timers and background tasks (health checks, the
# change-log drain, metrics), whose cost follows the run's length, not its transactions.
total_ir() {
  local f max=0 n
  for f in "$1"-*; do
    n=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
    [ "${n:-0}" -gt "$max" ] && max=$n
  done
  echo "$max"
}

# run_once TARGET MODE TXNS OUT: starts TARGET under callgrind, runs pgbench, stops it.
run_once() {
  local t=$1 mode=$2 n=$3 out=$4 name port aport pid
  name=cg$RANDOM
  free_port port
  case $t in
    pgbouncer)
      PGBOUNCER=$(wrap "${PGBOUNCER_REAL}" "$out") start_pgbouncer "$name" "$port" "$(cluster_port old)" bench 40
      ;;
    switchyard*)
      local bin=$PROXY_A
      case $t in *-b) bin=$PROXY_BIN_B ;; esac
      free_port aport
      local extra=(--mirror-mode off)
      case $t in switchyard-mirror*) extra=(--mirror-mode two-phase --shadow-sample-rate "${SHADOW_RATE:-0.000001}") ;; esac
      PROXY_BIN=$(wrap "$bin" "$out") start_switchyard "$name" "$port" "$aport" old new bench \
        --worker-threads 1 "${extra[@]}"
      ;;
  esac
  pid=${BENCH_PID[$name]}
  run_pgbench "$BENCH_WORK/$name.pgbench" -n -S -M "$mode" -c "$CLIENTS" -j $((CLIENTS < 2 ? CLIENTS : 2)) -t "$n" \
    -h 127.0.0.1 -p "$port" -U postgres bench || die "$t: $BENCH_LAST_ERROR"
  stop_pid "$pid" 60 || die "$t did not stop within 60 s"
  compgen -G "$out-*" >/dev/null || die "$t: no callgrind output in $out-*"
}

PGBOUNCER_REAL=$PGBOUNCER
printf '%-9s %-20s %16s\n' mode target "instr/txn" | tee "$BENCH_WORK/rows.txt"
for mode in $MODES; do
  for t in $TARGETS; do
    a=$BENCH_WORK/$t-$mode-1.cg; b=$BENCH_WORK/$t-$mode-2.cg
    run_once "$t" "$mode" "$TXNS" "$a"
    run_once "$t" "$mode" $((2 * TXNS)) "$b"
    per=$(awk -v a="$(total_ir "$a")" -v b="$(total_ir "$b")" -v n=$((CLIENTS * TXNS)) \
      'BEGIN {printf "%.0f", (b - a) / n}')
    printf '%-9s %-20s %16s\n' "$mode" "$t" "$per" | tee -a "$BENCH_WORK/rows.txt"
  done
done

echo
python3 - "$BENCH_WORK/rows.txt" <<'PY'
import collections, sys
by = collections.defaultdict(dict)
for line in list(open(sys.argv[1]))[1:]:
    mode, t, n = line.split()
    by[mode][t] = float(n)
print("%-9s %-20s %12s %12s %12s" % ("mode", "target", "instr/txn", "/ PgBouncer", "/ passthru"))
for mode, row in by.items():
    for t, n in row.items():
        pgb = row.get("pgbouncer")
        base = row.get("switchyard-b" if t.endswith("-b") else "switchyard")
        print("%-9s %-20s %12.0f %12s %12s" % (mode, t, n,
              "%.2f" % (n / pgb) if pgb else "-",
              "%.2f" % (n / base) if base and t.startswith("switchyard-mirror") else "-"))
PY
