#!/usr/bin/env bash
# bench/verify.sh: switchyard-reconciler verify side by side with reladiff on the same two
# databases: pgbench_accounts at scale SCALE on "old" and "new", first identical, then with
# 100 scattered rows changed on new. Wall time, rows/s and differences found per tool.
#
#   cargo build --release -p switchyard-reconciler
#   cargo build -p switchyard-backfill --example checksum_speed   # for KEYLESS=1
#   SCALE=100 bench/verify.sh              # 10M rows per side (~1.3 GB each), ~10 min
#
# KEYLESS=1 (the default) also copies pgbench_accounts into pgbench_accounts_keyless (the
# same rows, no primary key) on both sides and times, with the checksum_speed example,
# the whole-table checksums a backfill verifies with, both sides at once: the keyed
# table's key-range checksum over its whole range, and the keyless table's multiset
# checksum (count and sum of row hashes, what `switchyard-backfill` compares for a table
# without a primary key). The figures are the servers' (the example only waits), so a
# debug build measures the same as a release one.
#
# Both clusters are initialised with `pgbench -i -s SCALE` (client-side generation), whose
# data is deterministic (filler is blank, abalance 0), so old and new start equal; the
# script checks that with a count and a sum over both. The changed rows are
# aid = (g * 99991) % N + 1 for g = 1..CHANGED, abalance + 1 on new. Prints a table on
# stdout and writes it as Markdown to bench/results/verify-<date>.md. Exits non-zero when a
# tool fails or reports a different number of differences than were made.
#
# Environment (defaults in brackets):
#   SCALE [100]           pgbench scale (100 = 10M rows)
#   CHANGED [100]         rows changed on new for the second pair of runs
#   JOBS [4]              switchyard --jobs
#   RELADIFF_THREADS [1]  reladiff --threads (1 is reladiff's default)
#   VERIFY_ARGS [""]      extra flags for switchyard verify (tuning: "--leaf-rows 1000")
#   TOOLS ["switchyard reladiff"]   which tools to run
#   KEYLESS [1]           the keyed vs keyless checksum timing above (0: skip)
#   CHECKSUM_BIN [$CARGO_TARGET_DIR or target, then debug/examples/checksum_speed]
#   ROUNDS [1]            runs per tool and data set; the table shows the median time
#   QUIET_WAIT [120]      seconds to wait for the machine to be <10% busy before each run
#   RESULTS_DIR [bench/results]   KEEP_WORK [0]
#   RECONCILER_BIN [target/release/switchyard-reconciler]
#   RELADIFF [${SWITCHYARD_CACHE:-/root/.cache/switchyard}/venv/bin/reladiff]
#   PG_BIN, PGBENCH, PSQL (see lib.sh)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-100}
CHANGED=${CHANGED:-100}
JOBS=${JOBS:-4}
RELADIFF_THREADS=${RELADIFF_THREADS:-1}
VERIFY_ARGS=${VERIFY_ARGS:-}
TOOLS=${TOOLS:-"switchyard reladiff"}
KEYLESS=${KEYLESS:-1}
CHECKSUM_BIN=${CHECKSUM_BIN:-${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/debug/examples/checksum_speed}
ROUNDS=${ROUNDS:-1}
QUIET_WAIT=${QUIET_WAIT:-120}
RECONCILER_BIN=${RECONCILER_BIN:-$BENCH_ROOT/target/release/switchyard-reconciler}
RELADIFF=${RELADIFF:-${SWITCHYARD_CACHE:-/root/.cache/switchyard}/venv/bin/reladiff}
DB=bench
TABLE=pgbench_accounts
ROWS=$((SCALE * 100000))

[ -x "$RECONCILER_BIN" ] || die "$RECONCILER_BIN not found: cargo build --release -p switchyard-reconciler"
[[ " $TOOLS " != *" reladiff "* ]] || [ -x "$RELADIFF" ] ||
  die "reladiff not found at $RELADIFF: run .ci/setup (or set RELADIFF)"
[ "$KEYLESS" = 0 ] || [ -x "$CHECKSUM_BIN" ] ||
  die "$CHECKSUM_BIN not found: cargo build -p switchyard-backfill --example checksum_speed"

bench_init verify
results_files verify
RAW=$BENCH_WORK/results.tsv
: >"$RAW"
FAILED=0

# Enough memory that both copies stay cached; durability off (it is a read benchmark);
# minimal WAL, so the tables created and filled in one transaction write none.
settings=(shared_buffers=2GB max_connections=100 fsync=off synchronous_commit=off
  full_page_writes=off max_wal_size=8GB checkpoint_timeout=30min wal_level=minimal
  max_wal_senders=0)
free_port P_OLD; start_cluster old "$P_OLD" "${settings[@]}"
free_port P_NEW; start_cluster new "$P_NEW" "${settings[@]}"
for p in "$P_OLD" "$P_NEW"; do psql_at "$p" postgres -c "CREATE DATABASE $DB"; done

log "pgbench -i -s $SCALE on both clusters (in parallel)"
t0=$(date +%s)
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$P_OLD" -U postgres "$DB" >"$BENCH_WORK/init-old.log" 2>&1 &
init_old=$!
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$P_NEW" -U postgres "$DB" >"$BENCH_WORK/init-new.log" 2>&1 ||
  { cat "$BENCH_WORK/init-new.log" >&2; die "pgbench -i on new failed"; }
wait "$init_old" || { cat "$BENCH_WORK/init-old.log" >&2; die "pgbench -i on old failed"; }
log "initialised in $(($(date +%s) - t0)) s"
fingerprint="SELECT count(*), sum(aid::numeric * (abalance + 7)), sum(length(filler)) FROM $TABLE"
fp_old=$(psql_at "$P_OLD" "$DB" -At -c "$fingerprint")
fp_new=$(psql_at "$P_NEW" "$DB" -At -c "$fingerprint")
[ "$fp_old" = "$fp_new" ] || die "pgbench -i produced different data: old $fp_old, new $fp_new"
# Both tools read every row: load table and index into shared_buffers on both sides first,
# so that whichever tool runs first does not pay for it (a plain seq scan would not: it
# reads through a small ring buffer).
for p in "$P_OLD" "$P_NEW"; do
  psql_at "$p" "$DB" -c "VACUUM ANALYZE $TABLE" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" \
    -c "SELECT pg_prewarm('$TABLE'), pg_prewarm('${TABLE}_pkey')" >/dev/null
done

OLD_URL="postgres://postgres@127.0.0.1:$P_OLD/$DB"
NEW_URL="postgres://postgres@127.0.0.1:$P_NEW/$DB"

# Keyed vs keyless checksum, on identical data (before the changed rounds alter new).
KEYLESS_JSON=
if [ "$KEYLESS" != 0 ]; then
  log "copying $TABLE into ${TABLE}_keyless (no primary key) on both clusters"
  pids=()
  for p in "$P_OLD" "$P_NEW"; do
    psql_at "$p" "$DB" -c "BEGIN" -c "CREATE TABLE ${TABLE}_keyless AS SELECT * FROM $TABLE" \
      -c "COMMIT" -c "VACUUM ANALYZE ${TABLE}_keyless" >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || die "creating ${TABLE}_keyless failed"; done
  busy=$(wait_for_quiet "$QUIET_WAIT" 10 2) || warn "machine still ${busy}% busy before the checksums"
  log "checksum_speed: keyed range checksum vs keyless multiset checksum, $ROUNDS round(s) (machine ${busy}% busy before)"
  KEYLESS_JSON=$("$CHECKSUM_BIN" "$OLD_URL" "$NEW_URL" "$TABLE" "${TABLE}_keyless" "$ROUNDS") ||
    { warn "checksum_speed failed"; FAILED=1; }
  log "checksum_speed: $KEYLESS_JSON"
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["both_sides_equal"] and d["keyless_rows"] == d["keyed_rows"] == int(sys.argv[2]) else 1)' \
    "$KEYLESS_JSON" "$ROWS" || { warn "checksums differ between the sides, or wrong row counts"; FAILED=1; }
fi

# run_tool TOOL DATASET ROUND: times one run, stores "dataset tool round seconds found busy".
run_tool() {
  local tool=$1 data=$2 round=$3 out=$BENCH_WORK/$1-$2-$3.out busy t0 t1 rc=0 found
  busy=$(wait_for_quiet "$QUIET_WAIT" 10 2) || warn "machine still ${busy}% busy before $tool ($data)"
  log "$tool on $data data, round $round (machine ${busy}% busy before)"
  t0=$(date +%s.%N)
  case $tool in
    switchyard)
      "$RECONCILER_BIN" verify --old "$OLD_URL" --new "$NEW_URL" --tables "$TABLE" \
        --jobs "$JOBS" --format json $VERIFY_ARGS >"$out" 2>"$out.err" || rc=$?
      t1=$(date +%s.%N)
      # exit 1 means differences found, which is expected on the changed data set
      [ "$rc" -le 1 ] || { cat "$out.err" >&2; warn "switchyard exited $rc"; FAILED=1; }
      found=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["tables"][0]; print(t["missing_in_new"]+t["extra_in_new"]+t["different"])' "$out" 2>/dev/null || echo FAIL)
      ;;
    reladiff)
      "$RELADIFF" "${OLD_URL/postgres:/postgresql:}" "$TABLE" "${NEW_URL/postgres:/postgresql:}" "$TABLE" \
        -k aid -c bid -c abalance -c filler --threads "$RELADIFF_THREADS" --json >"$out" 2>"$out.err" || rc=$?
      t1=$(date +%s.%N)
      [ "$rc" -eq 0 ] || { tail -n 20 "$out.err" >&2; warn "reladiff exited $rc"; FAILED=1; }
      # one line per differing row image: count distinct keys
      found=$(python3 -c 'import json,sys; print(len({json.loads(l)[1][0] for l in open(sys.argv[1]) if l.startswith("[")}))' "$out" 2>/dev/null || echo FAIL)
      ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$data" "$tool" "$round" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "$found" "$busy" >>"$RAW"
}

for data in identical changed; do
  if [ "$data" = changed ]; then
    psql_at "$P_NEW" "$DB" -c "UPDATE $TABLE SET abalance = abalance + 1
      WHERE aid IN (SELECT (g::bigint * 99991) % $ROWS + 1 FROM generate_series(1, $CHANGED) g)" >/dev/null
    expected=$CHANGED
  else
    expected=0
  fi
  for round in $(seq "$ROUNDS"); do
    # alternate which tool goes first
    order=$TOOLS
    [ $((round % 2)) = 1 ] || order=$(echo "$TOOLS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for tool in $order; do run_tool "$tool" "$data" "$round"; done
  done
  for tool in $TOOLS; do
    awk -F'\t' -v d="$data" -v t="$tool" -v e="$expected" '$1 == d && $2 == t && $5 != e {bad = 1} END {exit bad}' "$RAW" ||
      { warn "$tool found a different number of differences than the $expected made on $data data"; FAILED=1; }
  done
done

# Table: median time per (data set, tool), rows/s over the rows of both sides' table.
table=$(python3 - "$RAW" "$ROWS" <<'PY'
import sys, statistics, collections
rows = int(sys.argv[2])
runs = collections.defaultdict(list)
found = {}
busy = collections.defaultdict(list)
for line in open(sys.argv[1]):
    data, tool, rnd, secs, fnd, b = line.rstrip("\n").split("\t")
    runs[(data, tool)].append(float(secs)); found[(data, tool)] = fnd; busy[(data, tool)].append(b)
print("| data | tool | wall s (median) | runs | rows/s | differences found | speed-up vs reladiff | machine busy % before |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for data in ("identical", "changed"):
    ref = statistics.median(runs[(data, "reladiff")]) if runs.get((data, "reladiff")) else None
    for tool in ("switchyard", "reladiff"):
        if (data, tool) not in runs: continue
        t = statistics.median(runs[(data, tool)])
        speed = f"{ref / t:.1f}x" if ref and tool == "switchyard" else ""
        print(f"| {data} | {tool} | {t:.2f} | {len(runs[(data, tool)])} | {rows / t:,.0f} | {found[(data, tool)]} | {speed} | {'/'.join(busy[(data, tool)])} |")
PY
)
{
  echo "# verify benchmark $STAMP"
  echo
  echo "\`SCALE=$SCALE CHANGED=$CHANGED JOBS=$JOBS RELADIFF_THREADS=$RELADIFF_THREADS ROUNDS=$ROUNDS VERIFY_ARGS=\"$VERIFY_ARGS\" bench/verify.sh\`, $ROWS rows in $TABLE per side"
  echo "machine: $(machine_summary); commit $(git_describe)"
  echo "switchyard-reconciler: $(binary_summary "$RECONCILER_BIN"); reladiff $("$RELADIFF" --version 2>/dev/null | tr -d '\n' || echo '?')"
  echo
  echo "$table"
  if [ -n "$KEYLESS_JSON" ]; then
    echo
    python3 - "$KEYLESS_JSON" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(f"Whole-table checksum, both sides at once, median of {d['rounds']} ({d['row_hash']} row hash):")
print()
print("| table | checksum | rows per side | wall s | rows/s per side |")
print("| --- | --- | ---: | ---: | ---: |")
for kind, name in (("keyed", "key range (whole table)"), ("keyless", "multiset")):
    s = d[f"{kind}_seconds_median"]; n = d[f"{kind}_rows"]
    print(f"| {d[kind + '_table']} | {name} | {n:,} | {s:.2f} | {n / s:,.0f} |")
PY
  fi
} | tee "$MD_OUT"
log "written to $MD_OUT"
exit "$FAILED"
