#!/usr/bin/env bash
# bench/cutover.sh: what clients feel while the cutover flag moves, side by side with the
# classic manual cutover through PgBouncer, under the same load in one run.
#
#   SCALE=10 DURATION=40 FLIPS=10 bench/cutover.sh
#
# Two throwaway clusters ("old" and "new", both `pgbench -i -s SCALE`). Load: pgbench
# (-M simple, 8 clients) running tpcb-like and select-only (weights 1:4), with a
# per-transaction log.
#   switchyard: two proxy instances, 4 clients through each; the script moves the flag
#               through SEQ (reads-new writes-new reads-new shadow) FLIPS times
#               (`switchyard-proxy cutover`), a flip every ~DURATION/(len(SEQ)*FLIPS+1) s;
#               flips that move writes (to and from writes-new) are also summed up apart;
#   pgbouncer:  one PgBouncer (transaction pooling) in front of old, 8 clients; the same
#               number of switches, each PAUSE → point the database at the other server →
#               RELOAD → RESUME (the data diverges, which this load does not mind).
# For each: the longest a transaction took that overlapped a switch window, p99 latency of
# transactions overlapping a window and of the others, client errors, how long the
# switches took, and TPS per second. Environment: SCALE [10], DURATION [40], FLIPS [10],
# SEQ, DURABLE [0], PROXY_BIN, PG_BIN, PGBENCH, PSQL, PGBOUNCER.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-40}
FLIPS=${FLIPS:-10}
SEQ=${SEQ:-reads-new writes-new reads-new shadow}
read -r -a PHASES <<<"$SEQ"
DB=bench
command -v python3 >/dev/null || die "python3 is needed to summarise the logs"
bench_init cutover

start_pgbench_pair "$DB" "$SCALE" "$DURABLE"
OLD_URL="postgres://postgres@127.0.0.1:$P_OLD/$DB"
NEW_URL="postgres://postgres@127.0.0.1:$P_NEW/$DB"
GAP=$(awk -v d="$DURATION" -v f="$FLIPS" -v n="${#PHASES[@]}" 'BEGIN {printf "%.2f", d / (n * f + 1)}')

now() { date +%s.%N; }

# load NAME PORT CLIENTS: pgbench in the background with a per-transaction log; its pid
# is added to LOADS.
LOADS=()
load() {
  local name=$1 port=$2 clients=$3
  mkdir -p "$BENCH_WORK/$name"
  (cd "$BENCH_WORK/$name" && exec "$PGBENCH" -h 127.0.0.1 -p "$port" -U postgres -n -M simple \
      -b tpcb-like@1 -b select-only@4 -c "$clients" -j "$clients" -T "$DURATION" \
      -l --log-prefix=tx "$DB" >"$BENCH_WORK/$name.out" 2>&1) &
  LOADS+=($!)
}
wait_loads() {
  local p
  for p in "${LOADS[@]}"; do wait "$p" || warn "pgbench $p exited with $?"; done
  LOADS=()
}

# ---------------------------------------------------------------- switchyard
free_port P_S1; free_port P_A1; free_port P_S2; free_port P_A2
start_switchyard sy1 "$P_S1" "$P_A1" old new "$DB" --instance-id sy1
start_switchyard sy2 "$P_S2" "$P_A2" old new "$DB" --instance-id sy2
log "switchyard: load through two instances, $FLIPS x ($SEQ)"
WIN="$BENCH_WORK/sy-windows.txt"; : >"$WIN"
load sy-load1 "$P_S1" 4
load sy-load2 "$P_S2" 4
sleep "$GAP"
prev=shadow
for i in $(seq 1 "$FLIPS"); do
  for phase in "${PHASES[@]}"; do
    kind=r
    [ "$phase" = writes-new ] || [ "$prev" = writes-new ] && kind=w
    prev=$phase
    t0=$(now)
    out=$(env -u SWITCHYARD_OLD -u SWITCHYARD_NEW "$PROXY_BIN" cutover "$phase" \
          --old "$OLD_URL" --new "$NEW_URL" --by bench --json 2>&1) \
      || { echo "$out" >&2; die "cutover to $phase failed"; }
    t1=$(now)
    confirm=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["confirm_ms"])' <<<"$out")
    echo "$t0 $t1 $confirm $kind" >>"$WIN"
    sleep "$GAP"
  done
done
wait_loads
cat "$BENCH_WORK"/sy-load*/tx* >"$BENCH_WORK/sy-tx.log"
stop_switchyard sy1 || true
stop_switchyard sy2 || true

# ---------------------------------------------------------------- pgbouncer
free_port P_PGB
pgb_ini() { # PG_PORT
  pgbouncer_ini pgb "$P_PGB" "$1" "$DB" "pool_mode = transaction" "max_client_conn = 60" "default_pool_size = 20"
}
pgb_ini "$P_OLD"
run_pgbouncer pgb "$P_PGB" "$DB"
admin() { "$PSQL" -X -q -h 127.0.0.1 -p "$P_PGB" -U postgres pgbouncer -c "$1" >/dev/null; }
log "pgbouncer: load, $FLIPS x ${#PHASES[@]} switches between old and new with PAUSE/RELOAD/RESUME"
PWIN="$BENCH_WORK/pgb-windows.txt"; : >"$PWIN"
load pgb-load "$P_PGB" 8
sleep "$GAP"
for i in $(seq 1 "$FLIPS"); do
  for n in "${!PHASES[@]}"; do
    port=$P_NEW
    [ $((n % 2)) = 1 ] && port=$P_OLD
    t0=$(now)
    admin "PAUSE $DB"
    pgb_ini "$port"
    admin "RELOAD"
    admin "RESUME $DB"
    t1=$(now)
    echo "$t0 $t1 $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1000}') w" >>"$PWIN"
    sleep "$GAP"
  done
done
wait_loads
cat "$BENCH_WORK"/pgb-load/tx* >"$BENCH_WORK/pgb-tx.log"

# ---------------------------------------------------------------- summary
python3 - "$BENCH_WORK" "$(machine_summary)" "$(git_describe)" <<'PY'
import sys, re
work, machine, rev = sys.argv[1:4]

def windows(path, kind=None):
    out = []
    for l in open(path):
        f = l.split()
        if f and (kind is None or f[3] == kind):
            out.append(tuple(float(x) for x in f[:3]))
    return out

def txs(path):
    out = []
    for l in open(path):
        f = l.split()
        # client tx latency_us script epoch_s epoch_us
        if len(f) < 6 or f[2] == "failed":
            continue
        end = int(f[4]) + int(f[5]) / 1e6
        lat = int(f[2]) / 1e3
        out.append((end - lat / 1e3, end, lat))
    return out

def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def failures(out):
    text = open(out).read()
    m = re.search(r"number of failed transactions: (\d+)", text)
    aborted = re.search(r"(\d+) of \d+ clients? aborted|aborted in command", text)
    errs = len(re.findall(r"(?m)^pgbench: error", text))
    return (int(m.group(1)) if m else 0) + errs

def summary(name, tx, win, outs):
    inside, outside = [], []
    for s, e, lat in tx:
        (inside if any(s < w1 and e > w0 for w0, w1, _ in win) else outside).append(lat)
    per_sec = {}
    for s, e, lat in tx:
        per_sec[int(e)] = per_sec.get(int(e), 0) + 1
    secs = sorted(per_sec)[1:-1]
    tps = [per_sec[k] for k in secs]
    return {
        "name": name,
        "switches": len(win),
        "switch_ms_max": max(w[2] for w in win) if win else float("nan"),
        "switch_ms_med": pct([w[2] for w in win], 50),
        "wall_ms_max": max((w[1] - w[0]) * 1000 for w in win) if win else float("nan"),
        "longest_in": max(inside) if inside else float("nan"),
        "longest_out": max(outside) if outside else float("nan"),
        "p99_in": pct(inside, 99),
        "p99_out": pct(outside, 99),
        "n_in": len(inside),
        "errors": sum(failures(o) for o in outs),
        "tps_min": min(tps) if tps else 0,
        "tps_med": pct(tps, 50),
        "timeline": tps,
    }

sy = summary("switchyard", txs(f"{work}/sy-tx.log"), windows(f"{work}/sy-windows.txt"),
             [f"{work}/sy-load1.out", f"{work}/sy-load2.out"])
pb = summary("pgbouncer", txs(f"{work}/pgb-tx.log"), windows(f"{work}/pgb-windows.txt"),
             [f"{work}/pgb-load.out"])
syw = summary("switchyard", txs(f"{work}/sy-tx.log"), windows(f"{work}/sy-windows.txt", "w"),
              [f"{work}/sy-load1.out", f"{work}/sy-load2.out"])
print(f"machine: {machine}; {rev}")
rows = [
    ("switches (flag moves / PAUSE-RELOAD-RESUME)", "switches", "{:.0f}"),
    ("switch confirmed in, median (ms)", "switch_ms_med", "{:.0f}"),
    ("switch confirmed in, max (ms)", "switch_ms_max", "{:.0f}"),
    ("switch wall time incl. the tool's start, max (ms)", "wall_ms_max", "{:.0f}"),
    ("transactions overlapping a switch", "n_in", "{:.0f}"),
    ("longest transaction overlapping a switch (ms)", "longest_in", "{:.1f}"),
    ("longest transaction otherwise (ms)", "longest_out", "{:.1f}"),
    ("p99 latency overlapping a switch (ms)", "p99_in", "{:.2f}"),
    ("p99 latency otherwise (ms)", "p99_out", "{:.2f}"),
    ("client errors", "errors", "{:.0f}"),
    ("TPS per second, median / min", None, None),
]
print(f"{'measure':<52}{'switchyard':>14}{'pgbouncer':>14}")
for label, key, f in rows:
    if key is None:
        a = f"{sy['tps_med']:.0f} / {sy['tps_min']}"
        b = f"{pb['tps_med']:.0f} / {pb['tps_min']}"
    else:
        a, b = f.format(sy[key]), f.format(pb[key])
    print(f"{label:<52}{a:>14}{b:>14}")
print(f"flips that moved writes (to or from writes-new): {syw['switches']}")
for label, key, f in rows[1:3] + rows[5:6] + rows[7:8]:
    print(f"  {label:<50}{f.format(syw[key]):>14}{f.format(pb[key]):>14}")
# Each instance logs every write pause it held ("The write pause ends ... pause_ms=N held=M"):
# the longest any client waited at a transaction's start.
pauses, held = [], []
for name in ("sy1", "sy2"):
    try:
        text = open(f"{work}/{name}.log").read()
    except OSError:
        continue
    for m in re.finditer(r"write pause ends.*?pause_ms=(\d+)\s+held=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", text)):
        pauses.append(int(m.group(1)))
        held.append(int(m.group(2)))
if pauses:
    print(f"  write pause per instance (ms), median / max: {pct(pauses, 50):.0f} / {max(pauses)}"
          f" over {len(pauses)} pauses; sessions held at once, max: {max(held)}")
for s in (sy, pb):
    print(f"TPS timeline, {s['name']}: {' '.join(str(x) for x in s['timeline'])}")
PY
