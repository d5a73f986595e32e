# shellcheck shell=bash
# bench/lib.sh: shared helpers for Switchyard's benchmark scripts, in strict mode (it sets
# `set -euo pipefail` for the script). Source it, do not run it:
#
#   source "$(dirname "$0")/lib.sh"
#   bench_init passthrough          # temp dir in $BENCH_WORK, cleanup trap on exit
#   free_port P_OLD; start_cluster old "$P_OLD" shared_buffers=256MB max_connections=200
#   free_port P_PGB; start_pgbouncer pgb "$P_PGB" "$(cluster_port old)" bench 300
#   free_port P_SY; free_port P_ADM; start_switchyard sy "$P_SY" "$P_ADM" old new bench
#   run_pgbench "$BENCH_WORK/run.out" -h 127.0.0.1 -p PORT -U postgres -S -T 10 bench
#
# Everything started through these helpers (clusters, pgbouncer, the proxy, background
# jobs) is stopped and the temp dir removed when the script exits, however it exits.
# Progress goes to stderr (`log`), so a script's stdout can carry only its results.
#
# Environment: PG_BIN (PostgreSQL server binaries; default $SWITCHYARD_PG_BIN as in
# scripts/demo.sh, else /usr/lib/postgresql/15/bin), PGBENCH, PSQL, PGBOUNCER, PROXY_BIN
# (binary paths), KEEP_WORK=1 (keep the temp dir, with all logs, after exit).
# Not SWITCHYARD_*: the proxy reads every SWITCHYARD_* variable as a setting (and the
# helpers start it with none of them, so that the caller's environment does not change
# what is measured).

# Every benchmark runs in strict mode from here on: the helpers count on a failed command,
# an unset variable or a broken pipe stopping the script.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-${SWITCHYARD_PG_BIN:-/usr/lib/postgresql/15/bin}}
PGBENCH=${PGBENCH:-$(command -v pgbench || echo "$PG_BIN/pgbench")}
PSQL=${PSQL:-$(command -v psql || echo "$PG_BIN/psql")}
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
PROXY_BIN=${PROXY_BIN:-$BENCH_ROOT/target/release/switchyard-proxy}
# DURABLE [0]: what the benchmarks' clusters keep of durability; 1 = fsync,
# synchronous_commit and full_page_writes on, as in production (start_pgbench_pair's DURABLE).
DURABLE=${DURABLE:-0}
# RESULTS_DIR [bench/results]: where the reports go (results_files).
RESULTS_DIR=${RESULTS_DIR:-$BENCH_ROOT/bench/results}

BENCH_WORK=
declare -ga BENCH_CLEANUP=()     # commands run in reverse order at exit
declare -gA BENCH_PORT=()        # cluster / pooler name -> TCP port
declare -gA BENCH_PID=()         # pooler / proxy name -> PID
declare -gA BENCH_PORTS_USED=()  # ports handed out by free_port (no duplicates)
BENCH_LAST_ERROR=

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command as the postgres OS user when we are root (the server refuses root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# bench_init NAME: creates $BENCH_WORK and installs the cleanup trap.
bench_init() {
  local name=${1:-bench}
  [ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries not found in $PG_BIN (set PG_BIN)"
  [ -x "$PGBENCH" ] || die "pgbench not found (set PGBENCH)"
  [ -x "$PSQL" ] || die "psql not found (set PSQL)"
  BENCH_WORK=$(mktemp -d "/tmp/switchyard-$name.XXXXXX")
  chmod 755 "$BENCH_WORK"
  [ "$(id -u)" = 0 ] && chown postgres "$BENCH_WORK"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# bench_defer CMD...: registers a cleanup command (run at exit, last registered first).
bench_defer() { BENCH_CLEANUP+=("$*"); }

bench_cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#BENCH_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${BENCH_CLEANUP[$i]}" >/dev/null 2>&1 || true
  done
  if [ -n "$BENCH_WORK" ] && [ -d "$BENCH_WORK" ]; then
    if [ "${KEEP_WORK:-0}" = 1 ]; then
      log "kept the work dir (logs, configs): $BENCH_WORK"
    else
      rm -rf "$BENCH_WORK"
    fi
  fi
  exit "$rc"
}

# free_port VAR: stores in VAR a TCP port free on 127.0.0.1, never the same one twice in a
# run (call it directly, not in $(...), or the no-duplicates bookkeeping is lost).
free_port() {
  local _fp_port
  for _ in $(seq 50); do
    _fp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    if [ -z "${BENCH_PORTS_USED[$_fp_port]:-}" ]; then
      BENCH_PORTS_USED[$_fp_port]=1
      printf -v "$1" '%s' "$_fp_port"
      return 0
    fi
  done
  die "no free port found"
}

# stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS (default 10), then SIGKILL.
# Returns 1 when SIGKILL was needed.
stop_pid() {
  local pid=$1 secs=${2:-10} i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

# stop_job PID: stop_pid, only if PID is still a background job of this shell.
stop_job() { jobs -p | grep -qx "$1" && stop_pid "$1" 5; return 0; }

# rss_kib PID: resident set size (VmRSS) in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2; found=1} END {if (!found) exit 1}' "/proc/$1/status"; }

# ---------------------------------------------------------------- PostgreSQL clusters

cluster_dir() { echo "$BENCH_WORK/$1"; }
cluster_port() { echo "${BENCH_PORT[$1]}"; }

# psql_at PORT DB ARGS...: psql over TCP to 127.0.0.1:PORT as postgres, stop on error.
psql_at() { local port=$1 db=$2; shift 2; "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@" "$db"; }

# set_cluster_conf NAME KEY=VALUE...: appends settings to the cluster's postgresql.conf
# (later lines win); takes effect at the next (re)start.
set_cluster_conf() {
  local name=$1 kv; shift
  for kv in "$@"; do
    printf "%s = '%s'\n" "${kv%%=*}" "${kv#*=}" | as_pg tee -a "$(cluster_dir "$name")/postgresql.conf" >/dev/null
  done
}

_pg_ctl_start() {
  local name=$1 dir
  dir=$(cluster_dir "$name")
  as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$BENCH_WORK/$name.log" -w -t 120 \
    -o "-p ${BENCH_PORT[$name]} -k $dir.sock -c listen_addresses=127.0.0.1" start >/dev/null \
    || { tail -n 30 "$BENCH_WORK/$name.log" >&2; die "cluster $name did not start"; }
}

# start_cluster NAME PORT [KEY=VALUE...]: initdb (trust auth, superuser postgres) and start
# a throwaway PostgreSQL cluster in $BENCH_WORK/NAME listening on 127.0.0.1:PORT.
start_cluster() {
  local name=$1 port=$2 dir; shift 2
  dir=$(cluster_dir "$name")
  BENCH_PORT[$name]=$port
  mkdir -p "$dir.sock"
  [ "$(id -u)" = 0 ] && chown postgres "$dir.sock"
  as_pg "$PG_BIN/initdb" -D "$dir" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 \
    >"$BENCH_WORK/$name.initdb.log" 2>&1 || { cat "$BENCH_WORK/$name.initdb.log" >&2; die "initdb $name failed"; }
  [ $# -gt 0 ] && set_cluster_conf "$name" "$@"
  bench_defer "as_pg '$PG_BIN/pg_ctl' -D '$dir' -m immediate -w stop"
  _pg_ctl_start "$name"
}

# enable_tls NAME: a self-signed certificate for 127.0.0.1 in the cluster's data directory
# and `ssl = on` (restarts it). Clients choose with `sslmode` (the URLs' DB_URL_PARAMS).
enable_tls() {
  local name=$1 dir
  dir=$(cluster_dir "$name")
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$dir/server.key" -out "$dir/server.crt" >"$BENCH_WORK/$name.openssl.log" 2>&1 ||
    { cat "$BENCH_WORK/$name.openssl.log" >&2; die "openssl failed for $name"; }
  chmod 600 "$dir/server.key"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/server.key" "$dir/server.crt"
  restart_cluster "$name" ssl=on ssl_cert_file=server.crt ssl_key_file=server.key
}

# restart_cluster NAME [KEY=VALUE...]: applies settings and restarts (fast shutdown).
restart_cluster() {
  local name=$1; shift
  [ $# -gt 0 ] && set_cluster_conf "$name" "$@"
  as_pg "$PG_BIN/pg_ctl" -D "$(cluster_dir "$name")" -m fast -w stop >/dev/null
  _pg_ctl_start "$name"
}

# client_backends PORT DB: number of client backends connected to DB (excluding this one).
client_backends() {
  psql_at "$1" postgres -At -c "SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND datname = '$2' AND pid <> pg_backend_pid()"
}

# wait_for_pg PORT DB [PID] [LOG]: waits (30 s) until `SELECT 1` works on 127.0.0.1:PORT;
# fails early if PID exits (printing LOG).
wait_for_pg() {
  local port=$1 db=$2 pid=${3:-} logf=${4:-}
  for _ in $(seq 300); do
    "$PSQL" -X -q -h 127.0.0.1 -p "$port" -U postgres -c 'SELECT 1' "$db" >/dev/null 2>&1 && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      [ -n "$logf" ] && tail -n 30 "$logf" >&2
      die "process $pid exited before accepting connections on port $port"
    fi
    sleep 0.1
  done
  [ -n "$logf" ] && tail -n 30 "$logf" >&2
  die "nothing accepts connections on 127.0.0.1:$port after 30 s"
}

# track_server NAME PORT DB PID STOP_SECONDS LOG: a server just started in the background
# as PID (PgBouncer, the proxy) is known by NAME (BENCH_PID, BENCH_PORT), stopped at exit
# (SIGKILL after STOP_SECONDS) and waited for until DB answers on 127.0.0.1:PORT (LOG shown
# if not).
track_server() {
  local name=$1 port=$2 db=$3 pid=$4 secs=$5 logf=$6
  BENCH_PID[$name]=$pid
  BENCH_PORT[$name]=$port
  bench_defer "stop_pid $pid $secs"
  wait_for_pg "$port" "$db" "$pid" "$logf"
}

# ---------------------------------------------------------------- PgBouncer

# pgbouncer_ini NAME PORT PG_PORT DB SETTING...: writes (again, before a RELOAD) the config
# of PgBouncer NAME in $BENCH_WORK/NAME: trust auth, listening on 127.0.0.1:PORT (unix socket
# in its own dir), pooling DB on 127.0.0.1:PG_PORT as postgres; each SETTING is one more
# `key = value` line (pool_mode, sizes).
pgbouncer_ini() {
  local dir=$BENCH_WORK/$1 port=$2 pg_port=$3 db=$4; shift 4
  # Only the first call makes the dir: a rewrite between PAUSE and RESUME stays a bare write.
  if [ ! -d "$dir/sock" ]; then
    mkdir -p "$dir/sock"
    printf '"postgres" ""\n' >"$dir/userlist.txt"
  fi
  {
    cat <<EOF
[databases]
$db = host=127.0.0.1 port=$pg_port dbname=$db user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir/sock
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    printf '%s\n' "$@"
  } >"$dir/pgbouncer.ini"
}

# run_pgbouncer NAME PORT DB: starts PgBouncer NAME from its config (pgbouncer_ini) and waits
# until it serves DB on 127.0.0.1:PORT.
run_pgbouncer() {
  local name=$1 port=$2 db=$3 dir=$BENCH_WORK/$1
  [ -x "$PGBOUNCER" ] || die "pgbouncer not found (set PGBOUNCER)"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  # PgBouncer refuses to run as root; -u makes it switch to postgres after startup.
  if [ "$(id -u)" = 0 ]; then
    "$PGBOUNCER" -u postgres "$dir/pgbouncer.ini" >"$dir/stderr.log" 2>&1 &
  else
    "$PGBOUNCER" "$dir/pgbouncer.ini" >"$dir/stderr.log" 2>&1 &
  fi
  track_server "$name" "$port" "$db" $! 10 "$dir/pgbouncer.log"
}

# start_pgbouncer NAME PORT PG_PORT DB MAX_CONN: PgBouncer in session mode (pgbouncer_ini)
# with room for MAX_CONN clients and server connections.
start_pgbouncer() {
  local name=$1 port=$2 pg_port=$3 db=$4 max=$5
  pgbouncer_ini "$name" "$port" "$pg_port" "$db" \
    "pool_mode = session" \
    "server_reset_query = DISCARD ALL" \
    "max_client_conn = $((max + 20))" \
    "default_pool_size = $max" \
    "min_pool_size = 0" \
    "reserve_pool_size = 0" \
    "max_db_connections = 0" \
    "max_user_connections = 0" \
    "log_connections = 0" \
    "log_disconnections = 0"
  run_pgbouncer "$name" "$port" "$db"
}

stop_pgbouncer() { stop_pid "${BENCH_PID[$1]}" 10 || warn "pgbouncer $1 needed SIGKILL"; }

# ---------------------------------------------------------------- switchyard-proxy

# start_switchyard NAME PORT ADMIN_PORT OLD_CLUSTER NEW_CLUSTER DB [EXTRA ARGS...]:
# switchyard-proxy listening on 127.0.0.1:PORT, log in $BENCH_WORK/NAME.log. It runs
# without the caller's SWITCHYARD_* variables (it would read them as settings); pass
# settings as EXTRA ARGS. DB_URL_PARAMS (e.g. `?sslmode=require`) is appended to both
# database URLs.
start_switchyard() {
  local name=$1 port=$2 aport=$3 old=$4 new=$5 db=$6 v; shift 6
  local unset_env=()
  [ -x "$PROXY_BIN" ] || die "$PROXY_BIN not found: cargo build --release -p switchyard-proxy"
  for v in $(compgen -e); do
    case $v in SWITCHYARD_*) unset_env+=(-u "$v") ;; esac
  done
  env "${unset_env[@]}" "$PROXY_BIN" \
    --old "postgres://postgres@127.0.0.1:${BENCH_PORT[$old]}/$db${DB_URL_PARAMS:-}" \
    --new "postgres://postgres@127.0.0.1:${BENCH_PORT[$new]}/$db${DB_URL_PARAMS:-}" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$aport" "$@" \
    >"$BENCH_WORK/$name.log" 2>&1 &
  track_server "$name" "$port" "$db" $! 40 "$BENCH_WORK/$name.log"
}

# stop_switchyard NAME: SIGTERM; warns if it does not exit within 10 s.
stop_switchyard() {
  local pid=${BENCH_PID[$1]} t0
  t0=$(date +%s.%N)
  if ! stop_pid "$pid" 10; then
    warn "switchyard-proxy ($1, pid $pid) did not exit within 10 s of SIGTERM: killed"
    return 1
  fi
  log "switchyard-proxy $1 stopped in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"
}

# start_pgbench_pair DB SCALE DURABLE: clusters "old" and "new" (ports in P_OLD and P_NEW,
# max_prepared_transactions on, durability off unless DURABLE=1), each with database DB
# initialised by `pgbench -i -s SCALE`.
start_pgbench_pair() {
  local db=$1 scale=$2 durable=$3 p
  local settings=(shared_buffers=256MB max_connections=100 max_prepared_transactions=100 checkpoint_timeout=30min)
  case $durable in
    1) ;;
    # WAL flushed by the WAL writer and by what must flush (PREPARE TRANSACTION): what
    # two-phase commit costs on a real disk, without every commit waiting for it.
    async) settings+=(synchronous_commit=off) ;;
    *) settings+=(fsync=off synchronous_commit=off full_page_writes=off) ;;
  esac
  free_port P_OLD
  free_port P_NEW
  start_cluster old "$P_OLD" "${settings[@]}"
  start_cluster new "$P_NEW" "${settings[@]}"
  for p in "$P_OLD" "$P_NEW"; do
    psql_at "$p" postgres -c "CREATE DATABASE $db"
    log "pgbench -i -s $scale on port $p"
    "$PGBENCH" -i -s "$scale" -q -h 127.0.0.1 -p "$p" -U postgres "$db" >"$BENCH_WORK/init-$p.log" 2>&1 \
      || { cat "$BENCH_WORK/init-$p.log" >&2; die "pgbench -i failed"; }
  done
}

# ---------------------------------------------------------------- pgbench

# run_pgbench OUTFILE PGBENCH-ARGS...: runs pgbench (stdout+stderr to OUTFILE) with a hard
# time limit of -T plus 60 s (env PGBENCH_GRACE). Returns 0 if it completed cleanly; else 1
# with the reason in BENCH_LAST_ERROR: non-zero exit, a hang (timeout), aborted clients,
# failed transactions, or no TPS line.
run_pgbench() {
  local out=$1 rc=0 dur=60 prev= a failed tps; shift
  for a in "$@"; do
    [ "$prev" = -T ] && dur=$a
    prev=$a
  done
  BENCH_LAST_ERROR=
  timeout -k 10 "$((dur + ${PGBENCH_GRACE:-60}))" "$PGBENCH" "$@" >"$out" 2>&1 || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    BENCH_LAST_ERROR="pgbench hung: still running $((dur + ${PGBENCH_GRACE:-60})) s after start (-T $dur), killed"
    return 1
  fi
  if [ "$rc" != 0 ]; then
    BENCH_LAST_ERROR="pgbench exited with status $rc: $(grep -m3 -iE 'error|abort|fatal' "$out" | tr '\n' ' ')"
    return 1
  fi
  if grep -qE 'aborted|Run was aborted' "$out"; then
    BENCH_LAST_ERROR="pgbench reports aborted clients: $(grep -m3 -E 'abort' "$out" | tr '\n' ' ')"
    return 1
  fi
  failed=$(pgbench_failed "$out")
  if [ -n "$failed" ] && [ "$failed" != 0 ]; then
    BENCH_LAST_ERROR="pgbench reports $failed failed transactions"
    return 1
  fi
  tps=$(pgbench_tps "$out")
  if [ -z "$tps" ] || awk -v t="$tps" 'BEGIN {exit !(t <= 0)}'; then
    BENCH_LAST_ERROR="pgbench printed no positive TPS"
    return 1
  fi
  return 0
}

# Parsers for pgbench (PostgreSQL 15) output files.
# "tps = 1234.56 (without initial connection time)", or with -C (a new connection per
# transaction) "tps = 456.78 (including reconnection times)".
pgbench_tps() { awk '/^tps = / {print $3; exit}' "$1"; }
# "latency average = 0.412 ms"
pgbench_latency_ms() { awk '/^latency average = / {print $4; exit}' "$1"; }
# "latency stddev = 0.101 ms" (only with -P / -r / -L)
pgbench_latency_stddev_ms() { awk '/^latency stddev = / {print $4; exit}' "$1"; }
# "number of failed transactions: 0 (0.000%)"
pgbench_failed() { awk -F': ' '/^number of failed transactions:/ {split($2, a, " "); print a[1]; exit}' "$1"; }
# "initial connection time = 12.345 ms"
pgbench_conn_ms() { awk '/^initial connection time = / {print $5; exit}' "$1"; }
# "number of transactions actually processed: 12345"
pgbench_transactions() { awk -F': ' '/^number of transactions actually processed:/ {split($2, a, "/"); print a[1]; exit}' "$1"; }
# Progress lines (-P) reporting 0 TPS: intervals in which nothing completed (stalls).
pgbench_stalls() { grep -cE '^progress: [0-9.]+ s, 0\.0 tps' "$1" || true; }

# pgbench_threads CLIENTS: a sensible -j on this machine: min(clients, cores).
pgbench_threads() {
  local c=$1 n
  n=$(nproc)
  [ "$c" -lt "$n" ] && n=$c
  echo "$n"
}

# ---------------------------------------------------------------- CPU accounting
# The machine is shared (2 cores): other processes (a compiler, say) skew a run. These
# helpers measure how much CPU the rest of the machine used while a run went on.

# cpu_busy_ticks: busy clock ticks of all CPUs so far (/proc/stat: all but idle and iowait).
cpu_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# proc_ticks PID...: CPU ticks used by each PID (all threads), its reaped children, and its
# live children (one level: postmaster -> backends, this shell -> proxy, pgbouncer).
proc_ticks() {
  local total=0 pid kid
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(_stat_ticks "$pid" 1)))
    for kid in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
      total=$((total + $(_stat_ticks "$kid" 0)))
    done
  done
  echo "$total"
}
# _stat_ticks PID WITH_CHILDREN: utime+stime (+cutime+cstime) from /proc/PID/stat.
_stat_ticks() {
  local line kids=$2
  line=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return 0; }
  line=${line##*) } # skip "pid (comm) ": $1 is now field 3 (state), utime field 14 is $12
  # shellcheck disable=SC2086
  set -- $line
  if [ "$kids" = 1 ]; then echo $((${12} + ${13} + ${14} + ${15})); else echo $((${12} + ${13})); fi
}

# postmaster_pid CLUSTER
postmaster_pid() { head -n 1 "$(cluster_dir "$1")/postmaster.pid" 2>/dev/null; }

# cpu_busy_pct SECONDS: how busy the whole machine is over SECONDS, in % of all cores.
cpu_busy_pct() {
  local t0 t1 secs=${1:-2}
  t0=$(cpu_busy_ticks); sleep "$secs"; t1=$(cpu_busy_ticks)
  awk -v d=$((t1 - t0)) -v s="$secs" -v n="$(nproc)" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", 100 * d / (s * hz * n)}'
}

# wait_for_quiet MAX_SECONDS [THRESHOLD_PCT] [SAMPLE_SECONDS]: waits (up to MAX_SECONDS)
# until the machine is less than THRESHOLD_PCT (default 10) busy over SAMPLE_SECONDS
# (default 3). Prints the last busy %; returns 1 if it never got quiet.
wait_for_quiet() {
  local max=$1 thr=${2:-10} sample=${3:-3} start busy
  start=$(date +%s)
  while :; do
    busy=$(cpu_busy_pct "$sample")
    [ "$busy" -lt "$thr" ] && { echo "$busy"; return 0; }
    [ $(($(date +%s) - start)) -ge "$max" ] && { echo "$busy"; return 1; }
  done
}

# ---------------------------------------------------------------- reporting

# results_files NAME: names this run's report: STAMP (the time now) and MD_OUT
# ($RESULTS_DIR/NAME-STAMP.md, RESULTS_DIR defaulting to bench/results), and makes the dir.
results_files() {
  STAMP=$(date +%Y-%m-%dT%H%M%S)
  # shellcheck disable=SC2034 # for the caller, which writes the report there
  MD_OUT=$RESULTS_DIR/$1-$STAMP.md
  mkdir -p "$RESULTS_DIR"
}

# machine_summary: one line describing the machine (for result files).
machine_summary() {
  local cpu mem
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  mem=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
  echo "$(nproc) cores ($cpu), $mem RAM, $(uname -sr)"
}

# binary_summary PATH: modification time and short sha256 of a binary (which build ran).
binary_summary() {
  echo "built $(date -u -r "$1" '+%Y-%m-%d %H:%M UTC'), sha256 $(sha256sum "$1" | cut -c1-12)"
}

# git_describe: the checked-out commit of the repository (plus "-dirty" when modified).
git_describe() { git -C "$BENCH_ROOT" describe --always --dirty 2>/dev/null || echo unknown; }
