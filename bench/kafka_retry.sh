#!/usr/bin/env bash
# bench/kafka_retry.sh: the retry log's two backends side by side, in one run.
#
#   SCALE=10 DURATION=15 bench/kafka_retry.sh
#
# Two throwaway clusters (old, new; `pgbench -i -s SCALE` on both), a tansu broker
# (in-memory storage) and two proxies in front of them: one with the embedded retry log,
# one with `--retry-log kafka`. The new database is stopped, so every write makes a retry
# record. Measures:
#   1-client latency of a one-row UPDATE (custom pgbench script), direct to old and through
#   each proxy while new is down: what recording costs a client with each backend
#   (Kafka: produce + wait for the broker's acks=all confirmation before COMMIT);
#   replay: new started, `switchyard-reconciler replay` timed on each backend's backlog
#   (records/s; Kafka as a one-member consumer group).
# Environment: SCALE [10], DURATION [15], CLIENTS [1] (for the queueing runs), DURABLE [0],
# PROXY_BIN, RECONCILER_BIN, TANSU_BIN, PG_BIN, PGBENCH, PSQL.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
DURATION=${DURATION:-15}
RECONCILER_BIN=${RECONCILER_BIN:-$BENCH_ROOT/target/release/switchyard-reconciler}
TANSU_BIN=${TANSU_BIN:-/root/.cache/switchyard/tansu-0.6.0/bin/tansu}
DB=bench
[ -x "$RECONCILER_BIN" ] || die "$RECONCILER_BIN not found: cargo build --release -p switchyard-reconciler"
[ -x "$TANSU_BIN" ] || die "$TANSU_BIN not found: run .ci/setup (it builds tansu into the cache)"
bench_init kafka_retry

start_pgbench_pair "$DB" "$SCALE" "$DURABLE"

free_port P_KAFKA
log "tansu broker on $P_KAFKA"
(cd "$BENCH_WORK" && NO_COLOR=1 exec "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$P_KAFKA" \
  --advertised-listener-url "tcp://127.0.0.1:$P_KAFKA" --storage-engine memory://tansu/ \
  >"$BENCH_WORK/tansu.log" 2>&1) &
kafka_pid=$!
bench_defer "stop_pid $kafka_pid 10"
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$P_KAFKA") 2>/dev/null && break
  sleep 0.1
done

free_port P_EMB
free_port P_EMB_ADM
free_port P_KAF
free_port P_KAF_ADM
start_switchyard emb "$P_EMB" "$P_EMB_ADM" old new "$DB" --instance-id embedded
start_switchyard kaf "$P_KAF" "$P_KAF_ADM" old new "$DB" --instance-id kafka \
  --retry-log kafka --kafka-brokers "127.0.0.1:$P_KAFKA" --kafka-on-failure fail

cat >"$BENCH_WORK/update.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
EOF
bench() { # NAME PORT SECONDS
  local out="$BENCH_WORK/$1.out"
  run_pgbench "$out" -h 127.0.0.1 -p "$2" -U postgres -n -M prepared -c 1 -T "$3" \
    -f "$BENCH_WORK/update.sql" "$DB" || die "$1: $BENCH_LAST_ERROR"
  echo "$out"
}

log "new database stopped: every write makes a retry record"
as_pg "$PG_BIN/pg_ctl" -D "$(cluster_dir new)" -m fast -w stop >/dev/null
bench warm-emb "$P_EMB" 3 >/dev/null
bench warm-kaf "$P_KAF" 3 >/dev/null
log "1 client, $DURATION s each: old direct, embedded, kafka"
l_old=$(pgbench_latency_ms "$(bench c1-old "$P_OLD" "$DURATION")")
l_emb=$(pgbench_latency_ms "$(bench c1-emb "$P_EMB" "$DURATION")")
l_kaf=$(pgbench_latency_ms "$(bench c1-kaf "$P_KAF" "$DURATION")")
n_emb=$(psql_at "$P_OLD" "$DB" -At -c "SELECT count(*) FROM _switchyard.retry_log")
n_kaf=$(curl -s "http://127.0.0.1:$P_KAF_ADM/api/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mirror"]["retry_log"]["records_kafka"])')
stop_switchyard emb
stop_switchyard kaf

_pg_ctl_start new
urls=(--old "postgres://postgres@127.0.0.1:$P_OLD/$DB" --new "postgres://postgres@127.0.0.1:$P_NEW/$DB")
"$RECONCILER_BIN" recover "${urls[@]}" --min-age-secs 0 >/dev/null
timed() { # NAME ARGS...: runs the reconciler, prints "wall-seconds busy-seconds"
  local name=$1 t0; shift
  t0=$(date +%s.%N)
  "$RECONCILER_BIN" replay "${urls[@]}" --format json "$@" >"$BENCH_WORK/$name.out" 2>"$BENCH_WORK/$name.err" \
    || { cat "$BENCH_WORK/$name.out" "$BENCH_WORK/$name.err" >&2; die "$name failed"; }
  printf '%s %s\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')" \
    "$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["busy_seconds"])' "$BENCH_WORK/$name.out")"
}
log "replay: embedded backlog ($n_emb records)"
read -r s_emb b_emb <<<"$(timed replay-emb)"
[ -n "${b_emb:-}" ] || die "embedded replay failed"
log "replay: Kafka backlog ($n_kaf records)"
read -r s_kaf b_kaf <<<"$(timed replay-kaf --retry-log kafka --kafka-brokers "127.0.0.1:$P_KAFKA" --kafka-instance-id bench)"
[ -n "${b_kaf:-}" ] || die "Kafka replay failed"
rate() { awk -v n="$1" -v s="$2" 'BEGIN {if (s > 0) printf "%.0f", n / s; else print "-"}'; }

echo "machine: $(machine_summary); scale $SCALE, ${DURATION}s runs, durable=$DURABLE, one-row UPDATE per transaction"
printf '%-52s %12s %12s\n' "measure" "embedded" "kafka"
printf '%-52s %12s %12s\n' "1-client latency, old direct (ms)" "$l_old" "$l_old"
printf '%-52s %12s %12s\n' "1-client latency through proxy, new down (ms)" "$l_emb" "$l_kaf"
printf '%-52s %12s %12s\n' "records queued" "$n_emb" "$n_kaf"
printf '%-52s %12s %12s\n' "replay wall time, start to exit (s)" "$s_emb" "$s_kaf"
printf '%-52s %12s %12s\n' "replay records/s, wall" "$(rate "$n_emb" "$s_emb")" "$(rate "$n_kaf" "$s_kaf")"
printf '%-52s %12s %12s\n' "replay busy time: take + apply + commit (s)" "$b_emb" "$b_kaf"
printf '%-52s %12s %12s\n' "replay records/s, busy" "$(rate "$n_emb" "$b_emb")" "$(rate "$n_kaf" "$b_kaf")"
