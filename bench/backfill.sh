#!/usr/bin/env bash
# bench/backfill.sh: switchyard-backfill side by side with pgcopydb and `pg_dump | psql`,
# copying the same data between two local clusters: pgbench_accounts at scale SCALE
# (10M rows at 100) and a wide table (~20 columns: text, jsonb, numeric, timestamptz;
# WIDE_ROWS rows). Wall time, rows/s and the tool's peak RSS (/usr/bin/time -v; the
# servers' memory is not counted) per tool and data set, ROUNDS rounds in one run.
#
#   cargo build --release -p switchyard-backfill
#   bench/backfill.sh                      # SCALE=100 WIDE_ROWS=2000000 ROUNDS=3: ~25 min, ~4 GB disk
#
# Each tool copies into its own fresh database on "new". switchyard-backfill is timed
# including the schema step it needs (`pg_dump --schema-only | psql`, well under a
# second); it verifies every chunk (checksums on both sides) as part of its run, the
# others verify nothing. Its run uses `--dual-writes off` (nothing else writes, as for
# the other tools), which bulk-loads tables still empty on new (key and indexes dropped,
# one rebuild, then every chunk verified); DIRECT=1 adds a run with `--bulk off` (the
# key kept while loading: switchyard-direct); SAFE=1 adds a run through the
# conflict-safe path (staging table + ON CONFLICT) that live dual writes need; SCAN=1 adds
# a run with `--scan-old` (bulk mode reading each table on old in one sequential scan:
# switchyard-scan). Afterwards the row
# count and an order-independent content hash of each copy are compared with old's.
# Prints a table on stdout and writes it as Markdown to bench/results/backfill-<date>.md.
#
# Environment (defaults in brackets):
#   SCALE [100]  WIDE_ROWS [2000000]  JOBS [4] (switchyard --jobs, pgcopydb --table-jobs
#   and --index-jobs)  CHUNK_ROWS [100000]  SAFE [0]  DIRECT [0]  SCAN [0]  TOOLS ["switchyard pgcopydb pg_dump"]
#   TLS [0] (1 = both servers serve TLS, every tool connects with sslmode=require)
#   DURABLE [0] (1 = fsync, synchronous_commit and full_page_writes on, as in production;
#   0 turns them off on both clusters)
#   ROUNDS [3] (every tool once per data set per round, the order rotating; the table
#   gives medians, and each tool's time against pgcopydb's in the same round)
#   WARMUP [1] (an untimed round first: on fresh clusters the first runs of any tool are
#   slow)
#   QUIET_WAIT [120] (seconds to wait for a quiet machine before each run)
#   BACKFILL_BIN [target/release/switchyard-backfill]  PGCOPYDB [pgcopydb on PATH;
#   installed with apt-get when missing]  PG_DUMP  RESULTS_DIR [bench/results]  KEEP_WORK [0]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-100}
WIDE_ROWS=${WIDE_ROWS:-2000000}
JOBS=${JOBS:-4}
CHUNK_ROWS=${CHUNK_ROWS:-100000}
SAFE=${SAFE:-0}
DIRECT=${DIRECT:-0}
SCAN=${SCAN:-0}
TOOLS=${TOOLS:-"switchyard pgcopydb pg_dump"}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
QUIET_WAIT=${QUIET_WAIT:-120}
BACKFILL_BIN=${BACKFILL_BIN:-$BENCH_ROOT/target/release/switchyard-backfill}
PG_DUMP=${PG_DUMP:-$(command -v pg_dump || echo "$PG_BIN/pg_dump")}
TIME=/usr/bin/time

[ -x "$BACKFILL_BIN" ] || die "$BACKFILL_BIN not found: cargo build --release -p switchyard-backfill"
[ -x "$TIME" ] || { log "installing GNU time"; apt-get install -y time >/dev/null 2>&1 || die "/usr/bin/time missing"; }
if [[ " $TOOLS " == *" pgcopydb "* ]]; then
  PGCOPYDB=${PGCOPYDB:-$(command -v pgcopydb || true)}
  if [ -z "$PGCOPYDB" ]; then
    log "installing pgcopydb (Debian package)"
    apt-get install -y pgcopydb >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y pgcopydb >/dev/null 2>&1; } ||
      die "could not install pgcopydb"
    PGCOPYDB=$(command -v pgcopydb)
  fi
fi

bench_init backfill
results_files backfill
RAW=$BENCH_WORK/results.tsv
: >"$RAW"
FAILED=0

# Same settings on both sides for every tool; durability off (copy speed, not fsync)
# unless DURABLE=1, which keeps the defaults a production database runs with.
settings=(shared_buffers=1GB max_connections=100 max_wal_size=16GB checkpoint_timeout=30min
  maintenance_work_mem=512MB)
if [ "$DURABLE" = 1 ]; then
  durability="fsync, synchronous_commit and full_page_writes on (defaults)"
else
  settings+=(fsync=off synchronous_commit=off full_page_writes=off)
  durability="fsync=off, synchronous_commit=off, full_page_writes=off"
fi
free_port P_OLD; start_cluster old "$P_OLD" "${settings[@]}"
free_port P_NEW; start_cluster new "$P_NEW" "${settings[@]}"
# TLS=1: both servers serve TLS and every tool connects with sslmode=require.
URL_PARAMS=
if [ "${TLS:-0}" = 1 ]; then
  enable_tls old
  enable_tls new
  URL_PARAMS="?sslmode=require"
fi
psql_at "$P_OLD" postgres -c "CREATE DATABASE accounts" -c "CREATE DATABASE wide"

log "pgbench -i -s $SCALE into old/accounts"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$P_OLD" -U postgres accounts >"$BENCH_WORK/init.log" 2>&1 ||
  { cat "$BENCH_WORK/init.log" >&2; die "pgbench -i failed"; }
# Only pgbench_accounts is measured (history has no primary key; branches and tellers
# are tiny).
psql_at "$P_OLD" accounts -c "DROP TABLE pgbench_history, pgbench_branches, pgbench_tellers" \
  -c "VACUUM ANALYZE pgbench_accounts" >/dev/null

log "wide table: $WIDE_ROWS rows into old/wide"
psql_at "$P_OLD" wide >/dev/null <<SQL
CREATE TABLE wide (
  id bigint PRIMARY KEY,
  name text NOT NULL, email text, city text, country text, note text,
  attrs jsonb, tags jsonb,
  price numeric(12,2), cost numeric(12,2), ratio numeric, weight numeric(10,3),
  created_at timestamptz NOT NULL, updated_at timestamptz, shipped_at timestamptz, seen_at timestamptz,
  qty integer, flags smallint, code text, active boolean
);
INSERT INTO wide
SELECT g, 'name ' || g, 'user' || g || '@example.com', 'city ' || (g % 1000), 'country ' || (g % 200),
       repeat(md5(g::text), 2),
       jsonb_build_object('g', g, 'k', md5(g::text), 'n', g % 97),
       jsonb_build_array(g % 7, 'tag' || (g % 13)),
       (g % 100000) / 100.0, (g % 7777) / 100.0, g / 7.0, (g % 5000) / 1000.0,
       timestamptz '2024-01-01' + g * interval '1 second', now() - g * interval '1 minute',
       CASE WHEN g % 3 = 0 THEN timestamptz '2025-01-01' + g * interval '1 second' END,
       now(), g % 1000, (g % 30000)::smallint, 'C' || lpad((g % 100000)::text, 6, '0'), g % 2 = 0
FROM generate_series(1, $WIDE_ROWS) g;
VACUUM ANALYZE wide;
SQL

# hash_of PORT DB TABLE: row count and an order-independent hash of the table's content.
hash_of() {
  psql_at "$1" "$2" -At -c "SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM $3 t"
}
declare -A SRC_HASH=(
  [accounts]=$(hash_of "$P_OLD" accounts pgbench_accounts)
  [wide]=$(hash_of "$P_OLD" wide wide)
)
declare -A TABLE_OF=([accounts]=pgbench_accounts [wide]=wide)
declare -A ROWS_OF=([accounts]=$((SCALE * 100000)) [wide]=$WIDE_ROWS)

# run_tool TOOL DATASET: copies DATASET (database name on old) into a fresh database on
# new with TOOL, timed; stores "dataset tool seconds rss_kib ok busy".
run_tool() {
  local tool=$1 data=$2 target db out busy t0 t1 rc=0 rss ok
  db="${data}_${tool//-/_}"
  psql_at "$P_NEW" postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null 2>&1
  local src="postgres://postgres@127.0.0.1:$P_OLD/$data$URL_PARAMS" dst="postgres://postgres@127.0.0.1:$P_NEW/$db$URL_PARAMS"
  out=$BENCH_WORK/$tool-$data
  # Each run starts with the WAL of the previous ones checkpointed away (disk space).
  psql_at "$P_OLD" postgres -c CHECKPOINT >/dev/null
  psql_at "$P_NEW" postgres -c CHECKPOINT >/dev/null
  busy=$(wait_for_quiet "$QUIET_WAIT" 10 2) || warn "machine still ${busy}% busy before $tool ($data)"
  log "$tool: $data (machine ${busy}% busy before)"
  t0=$(date +%s.%N)
  case $tool in
    switchyard | switchyard-safe | switchyard-direct | switchyard-scan)
      local mode=off bulk=
      [ "$tool" = switchyard-safe ] && mode=on
      [ "$tool" = switchyard-direct ] && bulk="--bulk=off"
      [ "$tool" = switchyard-scan ] && bulk="--scan-old"
      "$TIME" -v -o "$out.time" bash -c '
        set -euo pipefail
        "$1" --schema-only -d "$2" | "$3" -X -q -v ON_ERROR_STOP=1 -d "$4" >/dev/null
        "$5" --old "$2" --new "$4" --jobs "$6" --chunk-rows "$7" --dual-writes "$8" --brake-latency-ms 0 ${9:+"$9"}
      ' _ "$PG_DUMP" "$src" "$PSQL" "$dst" "$BACKFILL_BIN" "$JOBS" "$CHUNK_ROWS" "$mode" "$bulk" \
        >"$out.out" 2>"$out.err" || rc=$?
      ;;
    pgcopydb)
      rm -rf "$out.dir"
      "$TIME" -v -o "$out.time" "$PGCOPYDB" clone --source "$src" --target "$dst" \
        --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$out.dir" --no-owner --no-acl \
        >"$out.out" 2>"$out.err" || rc=$?
      ;;
    pg_dump)
      "$TIME" -v -o "$out.time" bash -c 'set -o pipefail; "$1" -d "$2" | "$3" -X -q -v ON_ERROR_STOP=1 -d "$4" >/dev/null' \
        _ "$PG_DUMP" "$src" "$PSQL" "$dst" >"$out.out" 2>"$out.err" || rc=$?
      ;;
  esac
  t1=$(date +%s.%N)
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out.time" 2>/dev/null || echo 0)
  ok=yes
  if [ "$rc" != 0 ]; then
    tail -n 20 "$out.err" >&2
    warn "$tool ($data) exited $rc"
    ok="exit $rc"
    FAILED=1
  elif [ "$(hash_of "$P_NEW" "$db" "${TABLE_OF[$data]}")" != "${SRC_HASH[$data]}" ]; then
    warn "$tool ($data): the copy differs from old"
    ok=DIFFERENT
    FAILED=1
  fi
  [ "${RECORD:-1}" = 1 ] && printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$data" "$tool" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" \
    "${rss:-0}" "$ok" "$busy" "${ROUND:-1}" >>"$RAW"
  psql_at "$P_NEW" postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
}

RUN_TOOLS=$TOOLS
[ "$SAFE" = 1 ] && RUN_TOOLS="$RUN_TOOLS switchyard-safe"
[ "$DIRECT" = 1 ] && RUN_TOOLS="$RUN_TOOLS switchyard-direct"
[ "$SCAN" = 1 ] && RUN_TOOLS="$RUN_TOOLS switchyard-scan"
read -r -a TOOL_LIST <<<"$RUN_TOOLS"
# Fresh clusters make the first runs slow for every tool (measured on a new pair:
# pgcopydb 16.1 s first, then switchyard 15.6 s, then 10.1 and 10.0 s: the kernel and
# both servers fill their caches and WAL segments), so an untimed round goes first.
if [ "$WARMUP" = 1 ]; then
  for data in accounts wide; do
    for tool in "${TOOL_LIST[@]}"; do log "warm-up (untimed)"; RECORD=0 run_tool "$tool" "$data"; done
  done
fi
# Each round runs every tool once per data set; the order rotates from round to round
# so that no tool always follows the same one.
for round in $(seq 1 "$ROUNDS"); do
  for data in accounts wide; do
    n=${#TOOL_LIST[@]}
    for i in $(seq 0 $((n - 1))); do
      ROUND=$round run_tool "${TOOL_LIST[$(((i + round - 1) % n))]}" "$data"
    done
  done
done

table=$(python3 - "$RAW" "${ROWS_OF[accounts]}" "${ROWS_OF[wide]}" <<'PY'
import statistics, sys
rows = {"accounts": int(sys.argv[2]), "wide": int(sys.argv[3])}
names = {"accounts": "pgbench_accounts", "wide": "wide (20 cols)"}
runs = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
wall = {}
for d, t, s, rss, ok, busy, r in runs:
    wall.setdefault((d, t), {})[r] = float(s)
print("| table | rows | tool | rounds | median wall s | min–max s | rows/s (median) | peak RSS MiB | vs pgcopydb: median / paired median | rounds ≤ pgcopydb | result | max machine busy % before |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
seen = []
for d, t, *_ in runs:
    if (d, t) not in seen:
        seen.append((d, t))
for d, t in seen:
    mine = [x for x in runs if x[0] == d and x[1] == t]
    w = wall[(d, t)]
    med = statistics.median(w.values())
    ref = wall.get((d, "pgcopydb"))
    vs = le = ""
    if ref and t != "pgcopydb":
        paired = [w[r] / ref[r] for r in w if r in ref]
        vs = f"{med / statistics.median(ref.values()):.2f}x / {statistics.median(paired):.2f}x"
        le = f"{sum(p <= 1 for p in paired)}/{len(paired)}"
    oks = sorted({x[4] for x in mine})
    print(f"| {names[d]} | {rows[d]:,} | {t} | {len(w)} | {med:.1f} | {min(w.values()):.1f}–{max(w.values()):.1f} "
          f"| {rows[d] / med:,.0f} | {max(int(x[3]) for x in mine) / 1024:.0f} | {vs} | {le} | {', '.join(oks)} "
          f"| {max(int(x[5]) for x in mine)} |")
print()
print("Per round (seconds, in the order run):")
print()
for r in sorted({x[6] for x in runs}, key=int):
    per = {}
    for x in runs:
        if x[6] == r:
            per.setdefault(names[x[0]], []).append(f"{x[1]} {float(x[2]):.1f}")
    print(f"- round {r}: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in per.items()))
PY
)
{
  echo "# backfill benchmark $STAMP"
  echo
  echo "\`SCALE=$SCALE WIDE_ROWS=$WIDE_ROWS JOBS=$JOBS CHUNK_ROWS=$CHUNK_ROWS ROUNDS=$ROUNDS WARMUP=$WARMUP SAFE=$SAFE DIRECT=$DIRECT SCAN=$SCAN DURABLE=$DURABLE bench/backfill.sh\`"
  echo "machine: $(machine_summary); commit $(git_describe)"
  echo "both clusters: shared_buffers=1GB, $durability"
  echo "switchyard-backfill: $(binary_summary "$BACKFILL_BIN"); $("${PGCOPYDB:-echo}" --version 2>/dev/null | head -n 1 || true); $("$PG_DUMP" --version)"
  echo
  echo "$table"
} | tee "$MD_OUT"
log "written to $MD_OUT"
exit "$FAILED"
