#!/usr/bin/env bash
# bench/passthrough.sh: pgbench through switchyard-proxy in passthrough, side by side with
# PostgreSQL directly and PgBouncer (session mode), plus memory per idle client connection.
#
#   SCALE=100 DURATION=15 bench/passthrough.sh
#
# Starts two throwaway PostgreSQL clusters ("old", initialised with `pgbench -i -s SCALE`;
# "new", empty: the proxy only needs a URL for it), PgBouncer and switchyard-proxy, runs
# every workload against the three targets in turn, prints a table on stdout and writes it
# as Markdown to bench/results/passthrough-<date>.md (raw per-run rows in a .tsv beside
# it). Exits non-zero if any run failed (pgbench error, aborted clients, failed
# transactions, a hang, a target process that died); the logs of a failed run are copied
# to bench/results/passthrough-<date>-logs/. Everything is stopped and removed on exit.
#
# Environment (defaults in brackets):
#   SCALE [10]            pgbench scale factor (100 = 10M accounts rows, ~1.5 GB)
#   DURATION [15]         seconds per measured run (pgbench -T)
#   CLIENTS ["1 8 32"]    client counts for select-only
#   MODES ["simple extended prepared"]   query modes for select-only
#   TPCB_CLIENTS ["1 8"]  client counts for tpcb-like ("" skips it)
#   TPCB_MODES [prepared] query modes for tpcb-like
#   TARGETS ["direct pgbouncer switchyard"]
#   ROUNDS [1]            repeat the whole matrix; the table shows the median per cell
#   WARMUP [5]            seconds of warm-up per target before measuring
#   IDLE_CONNS [1000]     idle connections for the memory test (0 skips it)
#   IDLE_HOLD [30]        seconds the idle connections stay open
#   DURABLE [0]           1 = keep fsync/synchronous_commit/full_page_writes on
#   FAIL_FAST [0]         1 = stop at the first failed run
#   QUIET_WAIT [120]      seconds to wait for the machine to be <10% busy before starting
#   RUN_QUIET_WAIT [30]   the same before each measured run (1 s samples; 0 = don't wait)
#   RESULTS_DIR [bench/results]   KEEP_WORK [0]   PROXY_BIN, PGBOUNCER, PGBENCH, PSQL, PG_BIN
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-"1 8 32"}
MODES=${MODES:-"simple extended prepared"}
TPCB_CLIENTS=${TPCB_CLIENTS-"1 8"}
TPCB_MODES=${TPCB_MODES:-prepared}
TARGETS=${TARGETS:-"direct pgbouncer switchyard"}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-5}
IDLE_CONNS=${IDLE_CONNS:-1000}
IDLE_HOLD=${IDLE_HOLD:-30}
FAIL_FAST=${FAIL_FAST:-0}
DB=bench

FAILURES=()

max_clients=8 # the warm-up uses 8 clients
for c in $CLIENTS $TPCB_CLIENTS; do [ "$c" -gt "$max_clients" ] && max_clients=$c; done
max_conn=200
[ $((max_clients + 20)) -gt $max_conn ] && max_conn=$((max_clients + 20))

bench_init passthrough
results_files passthrough
TSV_OUT=$RESULTS_DIR/passthrough-$STAMP.tsv
LOGS_OUT=$RESULTS_DIR/passthrough-$STAMP-logs
RUNS=$BENCH_WORK/runs
mkdir -p "$RUNS"
RAW=$BENCH_WORK/results.tsv
MEM=$BENCH_WORK/memory.tsv
printf 'round\tworkload\tmode\tclients\ttarget\tstatus\ttps\tlatency_ms\tstddev_ms\tconn_ms\tstalls\tother_cpu_pct\n' >"$RAW"
: >"$MEM"

# Runs last among the cleanup commands (after the processes stopped): keep the logs of a
# failed run.
save_logs() {
  [ ${#FAILURES[@]} -gt 0 ] || return 0
  mkdir -p "$LOGS_OUT"
  cp -r "$RUNS" "$LOGS_OUT/" 2>/dev/null || true
  cp "$BENCH_WORK"/*.log "$LOGS_OUT/" 2>/dev/null || true
  cp "$BENCH_WORK"/pgb*/pgbouncer.log "$LOGS_OUT/" 2>/dev/null || true
  printf '%s\n' "${FAILURES[@]}" >"$LOGS_OUT/FAILURES.txt"
  echo "logs of the failed runs: $LOGS_OUT" >&2
}
bench_defer save_logs

fail() {
  FAILURES+=("$*")
  printf 'FAILED: %s\n' "$*" >&2
  [ "$FAIL_FAST" = 1 ] && die "stopping at the first failure (FAIL_FAST=1)"
  return 0
}

# ------------------------------------------------------------------ setup
HZ=$(getconf CLK_TCK)
log "waiting (up to ${QUIET_WAIT:-120} s) for the machine to be less than 10% busy"
if START_BUSY=$(wait_for_quiet "${QUIET_WAIT:-120}" 10); then
  log "machine ${START_BUSY}% busy before the start"
else
  warn "the machine is still ${START_BUSY}% busy (other processes): numbers will be skewed"
fi
pg_settings=(shared_buffers=256MB max_connections=$max_conn max_wal_size=4GB
  checkpoint_timeout=30min)
if [ "$DURABLE" != 1 ]; then
  pg_settings+=(fsync=off synchronous_commit=off full_page_writes=off)
fi

free_port P_OLD
free_port P_NEW
log "starting the old cluster on port $P_OLD (${pg_settings[*]})"
start_cluster old "$P_OLD" "${pg_settings[@]}"
log "starting the new cluster on port $P_NEW"
start_cluster new "$P_NEW" max_connections=$max_conn
psql_at "$P_OLD" postgres -c "CREATE DATABASE $DB"
psql_at "$P_NEW" postgres -c "CREATE DATABASE $DB"

log "pgbench -i -s $SCALE on the old cluster"
t0=$(date +%s)
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$P_OLD" -U postgres "$DB" >"$BENCH_WORK/init.log" 2>&1 \
  || { cat "$BENCH_WORK/init.log" >&2; die "pgbench -i failed"; }
log "initialised in $(($(date +%s) - t0)) s"
psql_at "$P_OLD" "$DB" -c "CHECKPOINT"

free_port P_PGB
free_port P_SY
free_port P_ADM
log "starting PgBouncer on port $P_PGB (session mode, pool $max_clients)"
start_pgbouncer pgb "$P_PGB" "$P_OLD" "$DB" "$max_clients"
log "starting switchyard-proxy on port $P_SY (admin $P_ADM)"
start_switchyard sy "$P_SY" "$P_ADM" old new "$DB" --mirror-mode off

declare -A TARGET_PORT=([direct]=$P_OLD [pgbouncer]=$P_PGB [switchyard]=$P_SY)

# our_ticks: CPU ticks used so far by this benchmark's processes (this shell and its
# children, including PgBouncer and the proxy; both clusters).
our_ticks() { proc_ticks $$ "$(postmaster_pid old)" "$(postmaster_pid new)"; }

# target_alive TARGET: the process behind TARGET still runs.
target_alive() {
  case $1 in
    direct) psql_at "$P_OLD" postgres -c 'SELECT 1' >/dev/null 2>&1 ;;
    pgbouncer) kill -0 "${BENCH_PID[pgb]}" 2>/dev/null ;;
    switchyard) kill -0 "${BENCH_PID[sy]}" 2>/dev/null ;;
  esac
}

# reset_tpcb: what pgbench does before a tpcb-like run without -n, done directly on the
# cluster so that every target starts from the same state.
reset_tpcb() {
  psql_at "$P_OLD" "$DB" -c "VACUUM pgbench_branches" -c "VACUUM pgbench_tellers" \
    -c "TRUNCATE pgbench_history" -c "CHECKPOINT" >/dev/null
}

# measure ROUND WORKLOAD MODE CLIENTS TARGET
measure() {
  local round=$1 workload=$2 mode=$3 clients=$4 target=$5 out status=ok tps= lat= sd= conn= stalls=0
  local t0 t1 o0 o1 w0 w1 other
  local args=(-n -M "$mode" -c "$clients" -j "$(pgbench_threads "$clients")" -T "$DURATION" -P 5)
  [ "$workload" = select-only ] && args+=(-S)
  out=$RUNS/$round-$workload-$mode-c$clients-$target.out
  [ "$workload" = tpcb-like ] && reset_tpcb
  if [ "${RUN_QUIET_WAIT:-30}" -gt 0 ] && ! wait_for_quiet "${RUN_QUIET_WAIT:-30}" 10 1 >/dev/null; then
    warn "machine still busy after ${RUN_QUIET_WAIT:-30} s: measuring anyway"
  fi
  t0=$(cpu_busy_ticks); o0=$(our_ticks); w0=$(date +%s.%N)
  if ! target_alive "$target"; then
    status=FAIL
    fail "$target is not running (before $workload $mode c=$clients)"
  elif ! run_pgbench "$out" "${args[@]}" -h 127.0.0.1 -p "${TARGET_PORT[$target]}" -U postgres "$DB"; then
    status=FAIL
    fail "$target $workload -M $mode -c $clients: $BENCH_LAST_ERROR (pgbench ${args[*]})"
    tail -n 5 "$out" | sed 's/^/    /' >&2
  fi
  t1=$(cpu_busy_ticks); o1=$(our_ticks); w1=$(date +%s.%N)
  # CPU used by processes other than this benchmark's, in % of all cores.
  other=$(awk -v d=$(((t1 - t0) - (o1 - o0))) -v w0="$w0" -v w1="$w1" -v n="$(nproc)" -v hz="$HZ" \
    'BEGIN {p = 100 * d / ((w1 - w0) * hz * n); if (p < 0) p = 0; printf "%.0f", p}')
  [ "$other" -gt 10 ] && warn "other processes used $other% of the CPUs during this run"
  if [ "$status" = ok ]; then
    tps=$(pgbench_tps "$out")
    lat=$(pgbench_latency_ms "$out")
    sd=$(pgbench_latency_stddev_ms "$out")
    conn=$(pgbench_conn_ms "$out")
    stalls=$(pgbench_stalls "$out")
    [ "${stalls:-0}" -gt 0 ] && warn "$target $workload $mode c=$clients: $stalls progress interval(s) with 0 TPS"
    log "$(printf '%-10s %-11s %-8s c=%-3s %10.1f tps  %7.3f ms  (other CPU %s%%)' "$target" "$workload" "$mode" "$clients" "$tps" "$lat" "$other")"
  fi
  if ! target_alive "$target"; then
    status=FAIL
    fail "$target process exited during $workload -M $mode -c $clients"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$workload" "$mode" "$clients" \
    "$target" "$status" "$tps" "$lat" "$sd" "$conn" "${stalls:-0}" "$other" >>"$RAW"
}

# ------------------------------------------------------------------ warm-up
for t in $TARGETS; do
  log "warm-up: $t, select-only prepared, 8 clients, $WARMUP s"
  if ! run_pgbench "$RUNS/warmup-$t.out" -n -S -M prepared -c 8 -j "$(pgbench_threads 8)" -T "$WARMUP" \
    -h 127.0.0.1 -p "${TARGET_PORT[$t]}" -U postgres "$DB"; then
    fail "$t warm-up: $BENCH_LAST_ERROR"
  fi
done

# ------------------------------------------------------------------ the matrix
configs=()
for m in $MODES; do for c in $CLIENTS; do configs+=("select-only $m $c"); done; done
for m in $TPCB_MODES; do for c in $TPCB_CLIENTS; do configs+=("tpcb-like $m $c"); done; done
read -ra target_list <<<"$TARGETS"
nt=${#target_list[@]}
total=$((ROUNDS * ${#configs[@]} * nt))
log "measuring: ${#configs[@]} configurations x $nt targets x $ROUNDS round(s), $DURATION s each (~$((total * (DURATION + 2) / 60)) min)"
i=0
for ((round = 1; round <= ROUNDS; round++)); do
  for cfg in "${configs[@]}"; do
    read -r workload mode clients <<<"$cfg"
    # Rotate the order of the targets from one configuration to the next, so no target
    # always runs first (or right after the most expensive one).
    for ((k = 0; k < nt; k++)); do
      measure "$round" "$workload" "$mode" "$clients" "${target_list[$(((i + k) % nt))]}"
    done
    i=$((i + 1))
  done
done

# ------------------------------------------------------------------ idle connections
# idle_test TARGET VARIANT PORT PID: RSS of PID (a freshly started process) before, with
# IDLE_CONNS idle clients connected through 127.0.0.1:PORT, and after they left.
# VARIANT "query": each client ran `SELECT 1` and then sits idle (in session mode every
# client then holds a server connection, as an application's pooled connection does);
# "connect": the clients only logged in (PgBouncer opens no server connection for those).
idle_test() {
  local target=$1 variant=$2 port=$3 pid=$4 before with after n_old=0 n_new=0 rc out per conn waited=0 bg
  out=$RUNS/idle-$target-$variant.out
  psql_at "$port" "$DB" -c 'SELECT 1' >/dev/null
  sleep 1
  before=$(rss_kib "$pid")
  {
    [ "$variant" = query ] && echo 'SELECT 1;'
    printf '\\sleep %s s\n' "$IDLE_HOLD"
  } >"$BENCH_WORK/idle-$variant.sql"
  (
    if PGBENCH_GRACE=$((IDLE_HOLD + 120)) run_pgbench "$out" -n -c "$IDLE_CONNS" -j "$(pgbench_threads "$IDLE_CONNS")" \
      -t 1 -f "$BENCH_WORK/idle-$variant.sql" -h 127.0.0.1 -p "$port" -U postgres "$DB"; then
      echo ok >"$out.rc"
    else
      echo "$BENCH_LAST_ERROR" >"$out.rc"
    fi
  ) &
  bg=$!
  bench_defer "stop_job $bg"
  # Wait until every client is connected: all server connections are open (switchyard, or
  # PgBouncer after a query), or pgbench reports its connection phase over.
  while [ "$waited" -lt 1200 ]; do
    n_old=$(client_backends "$P_OLD" "$DB" 2>/dev/null || echo 0)
    [ "$n_old" -ge "$IDLE_CONNS" ] && break
    [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -ge "$IDLE_CONNS" ] && [ "$variant" = connect ] && break
    [ -f "$out.rc" ] && break
    sleep 0.1
    waited=$((waited + 1))
  done
  sleep 3
  with=$(rss_kib "$pid")
  n_old=$(client_backends "$P_OLD" "$DB" 2>/dev/null || echo '?')
  n_new=$(client_backends "$P_NEW" "$DB" 2>/dev/null || echo '?')
  log "$target ($variant): $n_old server connections on old, $n_new on new; RSS $before KiB -> $with KiB"
  wait "$bg" || true
  rc=$(cat "$out.rc" 2>/dev/null || echo "pgbench did not report")
  if [ "$rc" != ok ]; then
    fail "$target idle test ($IDLE_CONNS connections, $variant): $rc"
    tail -n 5 "$out" | sed 's/^/    /' >&2
  fi
  if [ "$variant" = query ] && [ "$n_old" != "$IDLE_CONNS" ]; then
    fail "$target idle test ($variant): expected $IDLE_CONNS server connections on old, saw $n_old"
  fi
  conn=$(pgbench_conn_ms "$out")
  sleep 2
  after=$(rss_kib "$pid" || echo '?')
  per=$(awk -v a="$before" -v b="$with" -v n="$IDLE_CONNS" 'BEGIN {printf "%.1f", (b - a) / n}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$variant" "$IDLE_CONNS" "$before" "$with" \
    "$after" "$per" "$n_old" "$n_new" "${conn:-?}" >>"$MEM"
}

log "stopping switchyard-proxy (SIGTERM) and PgBouncer"
stop_switchyard sy || fail "switchyard-proxy did not stop within 10 s of SIGTERM"
stop_pgbouncer pgb

if [ "$IDLE_CONNS" -gt 0 ]; then
  log "idle-connection memory test: $IDLE_CONNS connections (max_connections=$((IDLE_CONNS + 100)) on both clusters)"
  restart_cluster old max_connections=$((IDLE_CONNS + 100))
  restart_cluster new max_connections=$((IDLE_CONNS + 100))
  n=0
  for variant in query connect; do
    n=$((n + 1))
    free_port P_SYI
    free_port P_ADMI
    start_switchyard "sy-idle$n" "$P_SYI" "$P_ADMI" old new "$DB" --mirror-mode off
    idle_test switchyard "$variant" "$P_SYI" "${BENCH_PID[sy-idle$n]}"
    stop_switchyard "sy-idle$n" || fail "switchyard-proxy did not stop within 10 s of SIGTERM after the idle test"
    free_port P_PGBI
    start_pgbouncer "pgb-idle$n" "$P_PGBI" "$P_OLD" "$DB" "$IDLE_CONNS"
    idle_test pgbouncer "$variant" "$P_PGBI" "${BENCH_PID[pgb-idle$n]}"
    stop_pgbouncer "pgb-idle$n"
  done
fi

# ------------------------------------------------------------------ report
# render FORMAT (text|md): one row per configuration, median over rounds per cell.
render() {
  awk -F'\t' -v fmt="$1" '
    function median(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function cell(t, what) {
      if (fails[key SUBSEP t]) return "FAIL"
      if (!((key SUBSEP t) in tps)) return "-"
      return what == "tps" ? sprintf("%.0f", median(tps[key SUBSEP t])) : sprintf("%.3f", median(lat[key SUBSEP t]))
    }
    function ratio(a, b) { return (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) ? sprintf("%.2f", a / b) : "-" }
    function diff(a, b) { return (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) ? sprintf("%+.3f", a - b) : "-" }
    NR == 1 { next }
    {
      k = $2 SUBSEP $3 SUBSEP $4
      if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
      if ($6 != "ok") { fails[k SUBSEP $5] = 1; next }
      if (!(k in other) || $12 + 0 > other[k] + 0) other[k] = $12
      tps[k SUBSEP $5] = tps[k SUBSEP $5] " " $7
      lat[k SUBSEP $5] = lat[k SUBSEP $5] " " $8
    }
    END {
      h[1] = "workload"; h[2] = "mode"; h[3] = "clients"; h[4] = "direct TPS"; h[5] = "PgBouncer TPS"
      h[6] = "Switchyard TPS"; h[7] = "SY/direct"; h[8] = "SY/PgB"; h[9] = "direct ms"; h[10] = "PgB ms"
      h[11] = "SY ms"; h[12] = "PgB-direct ms"; h[13] = "SY-direct ms"; h[14] = "other CPU %"; nc = 14
      for (r = 1; r <= nk; r++) {
        key = order[r]; split(key, p, SUBSEP)
        dt = cell("direct", "tps"); bt = cell("pgbouncer", "tps"); st = cell("switchyard", "tps")
        dl = cell("direct", "lat"); bl = cell("pgbouncer", "lat"); sl = cell("switchyard", "lat")
        row[r, 1] = p[1]; row[r, 2] = p[2]; row[r, 3] = p[3]
        row[r, 4] = dt; row[r, 5] = bt; row[r, 6] = st; row[r, 7] = ratio(st, dt); row[r, 8] = ratio(st, bt)
        row[r, 9] = dl; row[r, 10] = bl; row[r, 11] = sl
        row[r, 12] = p[3] == 1 ? diff(bl, dl) : ""; row[r, 13] = p[3] == 1 ? diff(sl, dl) : ""
        row[r, 14] = (key in other) ? other[key] : "-"
      }
      if (fmt == "md") {
        line = "|"; sep = "|"
        for (c = 1; c <= nc; c++) { line = line " " h[c] " |"; sep = sep (c <= 2 ? " --- |" : " ---: |") }
        print line; print sep
        for (r = 1; r <= nk; r++) { line = "|"; for (c = 1; c <= nc; c++) line = line " " row[r, c] " |"; print line }
      } else {
        for (c = 1; c <= nc; c++) { w[c] = length(h[c]); for (r = 1; r <= nk; r++) if (length(row[r, c]) > w[c]) w[c] = length(row[r, c]) }
        for (c = 1; c <= nc; c++) printf (c <= 2 ? "%-*s  " : "%*s  "), w[c], h[c]; printf "\n"
        for (r = 1; r <= nk; r++) { for (c = 1; c <= nc; c++) printf (c <= 2 ? "%-*s  " : "%*s  "), w[c], row[r, c]; printf "\n" }
      }
    }' "$RAW"
}

render_memory() {
  local fmt=$1
  [ -s "$MEM" ] || return 0
  awk -F'\t' -v fmt="$fmt" '
    BEGIN {
      if (fmt == "md") { print "| target | idle clients | RSS before (KiB) | RSS with them (KiB) | RSS after they left (KiB) | KiB per client | server conns (old / new) | connect time (ms) |"; print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" }
      else printf "%-11s %-24s %10s %10s %10s %9s %12s %11s\n", "target", "idle clients", "RSS before", "RSS with", "RSS after", "KiB/client", "server conns", "connect ms"
    }
    {
      what = $3 ($2 == "query" ? " after SELECT 1" : " connected only")
      if (fmt == "md") printf "| %s | %s | %s | %s | %s | **%s** | %s / %s | %s |\n", $1, what, $4, $5, $6, $7, $8, $9, $10
      else printf "%-11s %-24s %10s %10s %10s %9s %12s %11s\n", $1, what, $4, $5, $6, $7, $8 " / " $9, $10
    }' "$MEM"
}

durability="fsync=off, synchronous_commit=off, full_page_writes=off"
[ "$DURABLE" = 1 ] && durability="fsync, synchronous_commit and full_page_writes on (defaults)"
settings="scale $SCALE, $DURATION s per run, $ROUNDS round(s) (median per cell), -n -P 5, -j min(clients, $(nproc)); old cluster: ${pg_settings[*]}"

echo
echo "Passthrough: direct vs PgBouncer $("$PGBOUNCER" --version | awk 'NR==1 {print $2}') (session) vs switchyard-proxy (binary $(binary_summary "$PROXY_BIN"))"
echo "$(machine_summary); $settings"
echo
render text
if [ -s "$MEM" ]; then
  echo
  echo "Memory per idle client connection ($IDLE_CONNS idle connections held $IDLE_HOLD s):"
  render_memory text
fi

{
  echo "# Passthrough benchmark, $(date '+%Y-%m-%d %H:%M %Z')"
  echo
  echo "- machine: $(machine_summary); pgbench, both PostgreSQL clusters, PgBouncer and the proxy share the cores"
  echo "- PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), PgBouncer $("$PGBOUNCER" --version | awk 'NR==1 {print $2}') (pool_mode=session), switchyard-proxy binary $(binary_summary "$PROXY_BIN") (work tree at $(git_describe) when the run started)"
  echo "- $settings"
  echo "- durability: $durability"
  echo "- TPS excludes the initial connection time; latency is pgbench's average; ratios are Switchyard / direct and Switchyard / PgBouncer; PgB-direct and SY-direct (1 client only) are the latency each proxy adds per transaction"
  echo "- other CPU %: the most CPU that processes outside the benchmark (other work on the machine) used during one of the row's three runs, in % of all cores; the machine was ${START_BUSY}% busy just before the start"
  echo "- command: \`SCALE=$SCALE DURATION=$DURATION CLIENTS=\"$CLIENTS\" MODES=\"$MODES\" TPCB_CLIENTS=\"$TPCB_CLIENTS\" ROUNDS=$ROUNDS IDLE_CONNS=$IDLE_CONNS bench/passthrough.sh\`"
  echo
  render md
  if [ -s "$MEM" ]; then
    echo
    echo "## Memory per idle client connection"
    echo
    echo "$IDLE_CONNS pgbench clients held open $IDLE_HOLD s (\`\\sleep\`), either after each ran \`SELECT 1\` (in session mode each then holds a server connection) or connected only. RSS is VmRSS of a freshly started proxy / PgBouncer process; KiB per client = (with - before) / $IDLE_CONNS. max_connections=$((IDLE_CONNS + 100)) on the clusters for this part."
    echo
    render_memory md
  fi
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo
    echo "## Failures"
    echo
    printf -- '- %s\n' "${FAILURES[@]}"
  fi
} >"$MD_OUT"
cp "$RAW" "$TSV_OUT"
[ -s "$MEM" ] && cp "$MEM" "${TSV_OUT%.tsv}-memory.tsv"
echo
echo "Markdown: $MD_OUT (raw runs: $TSV_OUT)"

# The proxy's own complaints, if any.
for f in "$BENCH_WORK"/sy*.log; do
  [ -f "$f" ] || continue
  # (The warning that no users are configured is expected here.)
  n=$(grep -E 'WARN|ERROR|panick' "$f" | grep -vc 'No users are configured' || true)
  if [ "$n" -gt 0 ]; then
    warn "$(basename "$f"): $n WARN/ERROR/panic line(s); first ones:"
    grep -E 'WARN|ERROR|panick' "$f" | grep -v 'No users are configured' | head -n 5 | sed 's/^/    /' >&2
  fi
done

if [ ${#FAILURES[@]} -gt 0 ]; then
  echo >&2
  echo "${#FAILURES[@]} FAILURE(S):" >&2
  printf '  - %s\n' "${FAILURES[@]}" >&2
  exit 1
fi
