#!/usr/bin/env bash
# bench/dual_writes.sh: pgbench tpcb-like through switchyard-proxy with dual writes
# (two-phase mode, change capture on old) side by side with the same work done directly,
# and retry-log replay speed.
#
#   SCALE=10 DURATION=15 bench/dual_writes.sh
#
# Two throwaway clusters ("old" and "new", both `pgbench -i -s SCALE`, identical data,
# max_prepared_transactions set on new). Measures, in one run:
#   baseline (before the proxy installs capture on old):
#              1 client direct to old, to new, and to new with PREPARE / COMMIT PREPARED;
#              8 clients: old tpcb-like and new tpcb-like with PREPARE / COMMIT PREPARED run
#              at once (the "ideal": the same work both databases do for the proxy, without
#              it); old's CPU and WAL bytes per transaction;
#   through the proxy (capture installed):
#              1 client: latency; the target is proxy <= 1.25 x (old + new);
#              8 clients: TPS against the ideal; old's CPU and WAL bytes per transaction;
#   modes:     (needs latency) old and new running plain tpcb-like at once, 8 clients each
#              (the ideal without any commit protocol); then a second proxy in
#              `--mirror-mode lockstep` (intents on old, no PREPARE): 1 client latency and
#              8-client TPS, side by side with the two-phase proxy above. Targets:
#              lockstep TPS >= 2 x two-phase, >= 0.7 x the plain ideal; lockstep
#              latency <= old + new;
#   replay:    new stopped, the proxy runs the 8-client load for REPLAY_SECS (every write
#              queued in the retry log), new started, `switchyard-reconciler replay`
#              timed: records/s vs the dual-write TPS (target: >= 2x);
#   memory:    the proxy's peak RSS while one UPDATE of every pgbench_accounts row streams
#              through (bounded memory for large statements).
# Prints a table on stdout. Environment: SCALE [10], DURATION [15], MODE [prepared],
# REPLAY_SECS [10], DURABLE [0], SECTIONS ["latency replay memory"], PROXY_BIN,
# RECONCILER_BIN, PG_BIN, PGBENCH, PSQL.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
MODE=${MODE:-prepared}
REPLAY_SECS=${REPLAY_SECS:-10}
SECTIONS=${SECTIONS:-"latency modes replay memory"}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
phases=- l_old=- l_new=- l_new2=- l_sy=- t_old=- t_new2=- t_ideal=- t_sy=- t_queue=- records=- replay_s=- replay_rps=- rss_before=- peak=-
cpu_base=- wal_base=- cpu_sy=- wal_sy=-
t_plain_old=- t_plain_new=- t_plain=- l_ls=- t_ls=- cpu_ls=- wal_ls=- phases_ls=-
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

# tpcb-like as pgbench runs it, then the same with PREPARE / COMMIT PREPARED: what the
# proxy makes new do for each transaction.
TPCB_2PC="$BENCH_WORK/tpcb-2pc.sql"
cat >"$TPCB_2PC" <<'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
PREPARE TRANSACTION 'bench:' || :client_id;
COMMIT PREPARED 'bench:' || :client_id;
SQL
# pgbench cannot build a gid from a variable inside PREPARE TRANSACTION: one script per
# client number would do, but the gid only has to be unique among open prepared
# transactions, and each client has at most one.
for c in $(seq 0 7); do
  sed "s/'bench:' || :client_id/'bench:$c'/" "$TPCB_2PC" >"$BENCH_WORK/tpcb-2pc-$c.sql"
done

bench() { # NAME PORT CLIENTS SECONDS [pgbench args...]
  local name=$1 port=$2 clients=$3 secs=$4 out="$BENCH_WORK/$1.out"; shift 4
  run_pgbench "$out" -h 127.0.0.1 -p "$port" -U postgres -n -M "$MODE" -c "$clients" -j "$clients" -T "$secs" "$@" "$DB" \
    || die "$name: $BENCH_LAST_ERROR"
  echo "$out"
}
# One client per prepared-transaction gid: client i runs script i.
bench_2pc() { # NAME PORT CLIENTS SECONDS
  local name=$1 port=$2 clients=$3 secs=$4 i pids=() outs=()
  for i in $(seq 0 $((clients - 1))); do
    run_pgbench "$BENCH_WORK/$name-$i.out" -h 127.0.0.1 -p "$port" -U postgres -n -M "$MODE" -c 1 -T "$secs" \
      -f "$BENCH_WORK/tpcb-2pc-$i.sql" "$DB" >/dev/null &
    pids+=($!)
    outs+=("$BENCH_WORK/$name-$i.out")
  done
  for i in "${pids[@]}"; do wait "$i" || die "$name failed"; done
  awk '/^tps = / {s += $3} END {printf "%.1f", s}' "${outs[@]}"
}
# phase_ms METRICS_BEFORE METRICS_AFTER PHASE: ms per commit spent in PHASE in between.
phase_ms() {
  local k="{phase=\"$3\"}"
  metric() { grep -F "$1$k " <<<"$2" | awk '{print $2}'; }
  awk -v s0="$(metric switchyard_commit_phase_seconds_sum "$1")" -v s1="$(metric switchyard_commit_phase_seconds_sum "$2")" \
      -v c0="$(metric switchyard_commit_phase_seconds_count "$1")" -v c1="$(metric switchyard_commit_phase_seconds_count "$2")" \
      'BEGIN {if (c1 - c0 > 0) printf "%.3f", 1000 * (s1 - s0) / (c1 - c0); else print "-"}'
}
wal_lsn() { psql_at "$P_OLD" "$DB" -At -c "SELECT pg_current_wal_lsn()"; }
wal_bytes() { psql_at "$P_OLD" "$DB" -At -c "SELECT pg_wal_lsn_diff('$2', '$1')"; }
# Old's CPU ms and WAL bytes per transaction while OUT's pgbench ran: MEASURED_CMD prints OUT.
per_txn() { # TICKS0 LSN0 OUT -> "cpu_ms wal_bytes"
  local t1 l1 n
  t1=$(proc_ticks "$(postmaster_pid old)")
  l1=$(wal_lsn)
  n=$(pgbench_transactions "$3")
  awk -v t="$((t1 - $1))" -v hz="$(getconf CLK_TCK)" -v w="$(wal_bytes "$2" "$l1")" -v n="$n" \
    'BEGIN {printf "%.3f %.0f", 1000 * t / hz / n, w / n}'
}

if has latency; then
  log "baseline (no capture on old yet): warm-up"
  bench warm-old "$P_OLD" 4 5 >/dev/null
  bench warm-new "$P_NEW" 4 5 >/dev/null
  log "baseline: 1 client, $DURATION s each"
  l_old=$(pgbench_latency_ms "$(bench c1-old "$P_OLD" 1 "$DURATION")")
  l_new=$(pgbench_latency_ms "$(bench c1-new "$P_NEW" 1 "$DURATION")")
  l_new2=$(pgbench_latency_ms "$(bench c1-new-2pc "$P_NEW" 1 "$DURATION" -f "$BENCH_WORK/tpcb-2pc-0.sql")")
  log "baseline: 8 clients old direct, measuring old's CPU and WAL"
  t0=$(proc_ticks "$(postmaster_pid old)"); w0=$(wal_lsn)
  o=$(bench c8-old "$P_OLD" 8 "$DURATION")
  t_old=$(pgbench_tps "$o")
  read -r cpu_base wal_base <<<"$(per_txn "$t0" "$w0" "$o")"
  log "baseline: the ideal, old tpcb-like and new tpcb-like with 2PC at once"
  bench c8-ideal-old "$P_OLD" 8 "$DURATION" >"$BENCH_WORK/ideal-old.path" &
  ideal_old_pid=$!
  t_new2=$(bench_2pc c8-ideal-new "$P_NEW" 8 "$DURATION")
  wait "$ideal_old_pid" || die "ideal old run failed"
  # A client stopped by -T between PREPARE and COMMIT PREPARED leaves its transaction
  # prepared, holding row locks every later run would wait on.
  orphans=$(psql_at "$P_NEW" "$DB" -At -c "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'bench:%'")
  for g in $(psql_at "$P_NEW" "$DB" -At -c "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'bench:%'"); do
    psql_at "$P_NEW" "$DB" -c "ROLLBACK PREPARED '$g'" >/dev/null
  done
  [ "$orphans" = 0 ] || log "rolled back $orphans prepared transactions the direct 2PC run left"
  t_ideal_old=$(pgbench_tps "$(cat "$BENCH_WORK/ideal-old.path")")
  t_ideal=$(awk -v a="$t_ideal_old" -v b="$t_new2" 'BEGIN {printf "%.1f", (a < b) ? a : b}')
  if has modes; then
    log "baseline: old and new plain tpcb-like at once (no commit protocol)"
    bench c8-plain-old "$P_OLD" 8 "$DURATION" >"$BENCH_WORK/plain-old.path" &
    plain_old_pid=$!
    t_plain_new=$(pgbench_tps "$(bench c8-plain-new "$P_NEW" 8 "$DURATION")")
    wait "$plain_old_pid" || die "plain old run failed"
    t_plain_old=$(pgbench_tps "$(cat "$BENCH_WORK/plain-old.path")")
    t_plain=$(awk -v a="$t_plain_old" -v b="$t_plain_new" 'BEGIN {printf "%.1f", (a < b) ? a : b}')
  fi
fi

start_switchyard sy "$P_SY" "$P_ADM" old new "$DB"

# measure_proxy NAME LABEL: through the running proxy NAME, 1-client latency with where its
# commits' time goes, then 8 clients with old's CPU and WAL per transaction; prints
# "latency tps cpu wal phases...".
measure_proxy() {
  local name=$1 label=$2 m0 m1 l t0 w0 o t cw ph phases=""
  log "$label: warm-up"
  bench "warm-$name" "$P_SY" 4 5 >/dev/null
  log "$label: 1 client, $DURATION s"
  m0=$(curl -s "http://127.0.0.1:$P_ADM/metrics")
  l=$(pgbench_latency_ms "$(bench "c1-$name" "$P_SY" 1 "$DURATION")")
  m1=$(curl -s "http://127.0.0.1:$P_ADM/metrics")
  # Where a 1-client commit's time goes: ms per commit in each phase of the protocol.
  for ph in drain prepare record commit_primary; do
    phases+="$ph $(phase_ms "$m0" "$m1" "$ph") "
  done
  log "$label: 8 clients, measuring old's CPU and WAL"
  t0=$(proc_ticks "$(postmaster_pid old)"); w0=$(wal_lsn)
  o=$(bench "c8-$name" "$P_SY" 8 "$DURATION")
  t=$(pgbench_tps "$o")
  cw=$(per_txn "$t0" "$w0" "$o")
  echo "$l $t $cw $phases"
}

if has latency; then
  read -r l_sy t_sy cpu_sy wal_sy phases <<<"$(measure_proxy sy "through the proxy")"
fi

if has modes && has latency; then
  stop_switchyard sy
  start_switchyard ls "$P_SY" "$P_ADM" old new "$DB" --mirror-mode lockstep
  read -r l_ls t_ls cpu_ls wal_ls phases_ls <<<"$(measure_proxy ls "lockstep proxy")"
  stop_switchyard ls
  start_switchyard sy "$P_SY" "$P_ADM" old new "$DB"
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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 > 0) printf "%.2f", a / b; else print "-"}'; }
echo "machine: $(machine_summary); scale $SCALE, -M $MODE, ${DURATION}s runs, durable=$DURABLE; $(git_describe)"
printf '%-52s %12s\n' "measure" "value"
printf '%-52s %12s\n' "1-client latency, old direct, no capture (ms)" "$l_old"
printf '%-52s %12s\n' "1-client latency, new direct (ms)" "$l_new"
printf '%-52s %12s\n' "1-client latency, new direct with 2PC (ms)" "$l_new2"
printf '%-52s %12s\n' "1-client latency, through proxy (ms)" "$l_sy"
printf '%-52s %s\n' "1-client commit phases (ms per commit)" "$phases"
printf '%-52s %12s\n' "proxy / (old + new)  [target <= 1.25]" "$(awk -v s="$l_sy" -v a="$l_old" -v b="$l_new" 'BEGIN {if (a + b > 0) printf "%.2f", s / (a + b); else print "-"}')"
printf '%-52s %12s\n' "8-client TPS, old direct alone" "$t_old"
printf '%-52s %12s\n' "8-client TPS, ideal (old + new with 2PC at once)" "$t_ideal"
printf '%-52s %12s\n' "8-client TPS, through proxy" "$t_sy"
printf '%-52s %12s\n' "proxy / ideal TPS" "$(ratio "$t_sy" "$t_ideal")"
printf '%-52s %12s\n' "old's CPU ms per txn, no capture (direct)" "$cpu_base"
printf '%-52s %12s\n' "old's CPU ms per txn, capture (through proxy)" "$cpu_sy"
printf '%-52s %12s\n' "old's WAL bytes per txn, no capture (direct)" "$wal_base"
printf '%-52s %12s\n' "old's WAL bytes per txn, capture (through proxy)" "$wal_sy"
printf '%-52s %12s\n' "8-client TPS, old and new plain at once (min)" "$t_plain"
printf '%-52s %12s\n' "1-client latency, lockstep mode (ms)" "$l_ls"
printf '%-52s %s\n' "1-client commit phases, lockstep (ms per commit)" "$phases_ls"
printf '%-52s %12s\n' "lockstep / (old + new)  [target <= 1.0]" "$(awk -v s="$l_ls" -v a="$l_old" -v b="$l_new" 'BEGIN {if (a + b > 0) printf "%.2f", s / (a + b); else print "-"}')"
printf '%-52s %12s\n' "8-client TPS, lockstep mode" "$t_ls"
printf '%-52s %12s\n' "lockstep / two-phase TPS  [target >= 2]" "$(ratio "$t_ls" "$t_sy")"
printf '%-52s %12s\n' "lockstep / plain ideal TPS  [target >= 0.7]" "$(ratio "$t_ls" "$t_plain")"
printf '%-52s %12s\n' "old's CPU ms per txn, lockstep (through proxy)" "$cpu_ls"
printf '%-52s %12s\n' "old's WAL bytes per txn, lockstep (through proxy)" "$wal_ls"
printf '%-52s %12s\n' "8-client TPS while new was down (queued)" "$t_queue"
printf '%-52s %12s\n' "retry records queued" "$records"
printf '%-52s %12s\n' "replay time (s)" "$replay_s"
printf '%-52s %12s\n' "replay records/s" "$replay_rps"
printf '%-52s %12s\n' "replay / dual-write TPS  [target >= 2]" "$(ratio "$replay_rps" "$t_sy")"
printf '%-52s %12s\n' "proxy RSS before large UPDATE (KiB)" "$rss_before"
printf '%-52s %12s\n' "proxy peak RSS during UPDATE of $rows rows" "$peak"
