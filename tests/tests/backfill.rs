//! `switchyard-backfill` against real clusters (scenarios 26–28): every key type, empty
//! tables and sparse keys; killed with SIGKILL mid-table and restarted (done chunks never
//! copied again, deferred indexes restored); two processes sharing one table; live
//! updates, deletes and inserts through the real dual-writing proxy during the backfill;
//! pause and resume; bad input.

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::backfill::{
    backfill, backfill_command, backfill_failpoint_command, backfill_with_env, pair_args,
    wait_backfill, BACKFILL_TIMEOUT,
};
use switchyard_tests::mirror::{assert_verified, eventually, on, pair_with, reconciler};
use switchyard_tests::process::send_signal;
use switchyard_tests::proxy::{Pair, ProxyProcess};
use switchyard_tests::refusing_port;
use switchyard_tests::wait::{poll_until, poll_until_async};
use switchyard_tests::PgCluster;

/// `sql` on `c`, `None` when it fails (the chunk table may not exist yet).
fn try_on(c: &PgCluster, sql: &str) -> Option<String> {
    on(c, sql).ok()
}

/// Number of chunks of `table` (as the chunk table names it) with `status`.
fn chunks_with(c: &PgCluster, table: &str, status: &str) -> Option<i64> {
    try_on(
        c,
        &format!(
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE table_name = '\"public\".\"{table}\"' AND status = '{status}'"
        ),
    )?
    .parse()
    .ok()
}

/// `--rebuild-memory-mb`: the sessions that rebuild keys and indexes raise
/// `maintenance_work_mem` when the server's is lower, never lower it, and keep the
/// server's with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_sessions_only_raise_maintenance_work_mem() -> Result<()> {
    use switchyard_backfill::indexes::raise_maintenance_work_mem;
    let c = tokio::task::spawn_blocking(|| {
        PgCluster::builder()
            .setting("maintenance_work_mem", "64MB")
            .start()
    })
    .await??;
    let raised = c.connect("postgres").await?;
    assert_eq!(raise_maintenance_work_mem(&raised, 1024).await?, "1GB");
    let shown: String = raised
        .query_one("SHOW maintenance_work_mem", &[])
        .await?
        .get(0);
    assert_eq!(shown, "1GB");
    let kept = c.connect("postgres").await?;
    assert_eq!(raise_maintenance_work_mem(&kept, 16).await?, "64MB");
    assert_eq!(raise_maintenance_work_mem(&kept, 0).await?, "64MB");
    let shown: String = kept
        .query_one("SHOW maintenance_work_mem", &[])
        .await?
        .get(0);
    assert_eq!(shown, "64MB", "never lowered");
    Ok(())
}

/// Spawns a backfill against `pair` with `extra` flags.
fn spawn(pair: &Pair, extra: &[&str]) -> Result<tokio::process::Child> {
    let args = pair_args(pair, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    backfill_command(&refs)?
        .spawn()
        .context("starting switchyard-backfill")
}

/// Scenario 28: integer, sparse bigint, uuid, text (non-ASCII, where byte order and
/// collation order differ), composite keys, identity and generated columns, a foreign
/// key, an empty table: all copied in several chunks each and verified equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_is_copied_and_verified() -> Result<()> {
    // `texts` sorts by an ICU collation, whose order differs from byte order ('Ärger'
    // next to 'a', not after 'z'): chunk ranges must still agree on both sides.
    let schema = "
        CREATE TABLE ints (id int PRIMARY KEY, v text);
        CREATE TABLE sparse (id bigint PRIMARY KEY, v text);
        CREATE TABLE uuids (id uuid PRIMARY KEY, v int);
        CREATE TABLE texts (k text COLLATE \"und-x-icu\" PRIMARY KEY, v int);
        CREATE TABLE composite (region text, n int, v numeric, PRIMARY KEY (region, n));
        CREATE TABLE empty (id int PRIMARY KEY);
        CREATE TABLE parent (id int PRIMARY KEY, name text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);
        CREATE TABLE wide (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, j jsonb,
                           ts timestamptz, f float8, twice int GENERATED ALWAYS AS (id * 2) STORED);";
    let pair = pair_with(schema).await?;
    on(
        &pair.old,
        "INSERT INTO ints SELECT g, 'v' || g FROM generate_series(1, 2000) g;
         INSERT INTO sparse SELECT g::bigint * 1000000007, 's' FROM generate_series(-500, 500) g;
         INSERT INTO uuids SELECT md5(g::text)::uuid, g FROM generate_series(1, 1000) g;
         INSERT INTO texts SELECT 'k' || g, g FROM generate_series(1, 800) g;
         INSERT INTO texts VALUES ('Ärger', 1), ('zebra', 2), ('éclair', 3), ('Zulu', 4),
                                  ('ß', 5), ('日本', 6), ('a''quote', 7), ('back\\slash', 8), ('', 9);
         INSERT INTO composite SELECT r, n, n / 7.0 FROM unnest(ARRAY['eu', 'us', 'ÿ', 'EU', 'é']) r,
                                      generate_series(1, 300) n;
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 500) g;
         INSERT INTO child SELECT g, 1 + g % 500 FROM generate_series(1, 1500) g;
         INSERT INTO wide (j, ts, f) SELECT jsonb_build_object('g', g, 'a', ARRAY[g, g]),
                                           now() - g * interval '1 minute', g / 3.0
                                    FROM generate_series(1, 700) g;",
    )?;
    let tables = "child,ints,sparse,uuids,texts,composite,empty,parent,wide";
    let run = backfill(
        &pair,
        &["--tables", tables, "--chunk-rows", "97", "--jobs", "3"],
    )
    .await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    assert_verified(&pair, tables).await?;
    let per_table = on(
        &pair.new,
        "SELECT table_name, count(*), count(*) FILTER (WHERE status = 'done'), sum(rows_old), \
                bool_and(checksum_old = checksum_new) \
         FROM _switchyard.backfill_chunks GROUP BY 1 ORDER BY 1",
    )?;
    let mut seen = BTreeMap::new();
    for line in per_table.lines() {
        let f: Vec<&str> = line.split('|').collect();
        ensure!(f.len() == 5, "{line}");
        seen.insert(
            f[0].to_string(),
            (
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
            ),
        );
    }
    for (table, rows) in [
        ("ints", 2000),
        ("sparse", 1001),
        ("uuids", 1000),
        ("texts", 809),
        ("composite", 1500),
        ("empty", 0),
        ("parent", 500),
        ("child", 1500),
        ("wide", 700),
    ] {
        let key = format!("\"public\".\"{table}\"");
        let (chunks, done, sum, same) = seen
            .get(&key)
            .with_context(|| format!("{key} not in {per_table}"))?;
        let chunks: i64 = chunks.parse()?;
        ensure!(
            chunks.to_string() == *done,
            "{table}: not all chunks done: {per_table}"
        );
        ensure!(*sum == rows.to_string(), "{table}: rows {sum}, want {rows}");
        ensure!(same == "t", "{table}: checksums differ in the chunk table");
        if rows > 200 {
            ensure!(chunks > 2, "{table}: {chunks} chunks for {rows} rows");
        } else if rows == 0 {
            ensure!(chunks == 1, "{table}: {chunks} chunks for an empty table");
        }
    }
    let splits = on(
        &pair.new,
        "SELECT string_agg(table_name || '=' || split, ' ' ORDER BY table_name) FROM _switchyard.backfill_tables",
    )?;
    ensure!(
        splits.contains("\"ints\"=int-range") && splits.contains("\"sparse\"=keyset"),
        "dense ints cut by range, sparse bigints by keyset: {splits}"
    );
    // The parent's chunks were all done before the child's first started.
    let order = on(
        &pair.new,
        "SELECT (SELECT max(finished_at) FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"parent\"') \
             <= (SELECT min(started_at) FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"child\"')",
    )?;
    ensure!(order == "t", "child started before parent was done");
    // A second run finds everything done and copies nothing.
    let again = backfill(&pair, &["--tables", tables, "--format", "json"]).await?;
    ensure!(again.code() == Some(0), "{}", again.text());
    let doc: serde_json::Value =
        serde_json::from_str(&again.stdout).with_context(|| again.text())?;
    ensure!(doc["rows_this_run"] == 0, "{}", again.text());
    let attempts = on(
        &pair.new,
        "SELECT max(attempts) FROM _switchyard.backfill_chunks",
    )?;
    ensure!(
        attempts == "1",
        "a chunk was copied twice: max attempts {attempts}"
    );
    Ok(())
}

/// A pair with `big` (key, a second index, 20,000 rows on old) created on both sides.
async fn big_pair() -> Result<Pair> {
    let pair = pair_with(
        "CREATE TABLE big (id int PRIMARY KEY, n int, pad text);
         CREATE INDEX big_n ON big (n);",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO big SELECT g, g % 97, repeat('x', 40) FROM generate_series(1, 20000) g",
    )?;
    Ok(pair)
}

/// A pair with table `t (id KEY PRIMARY KEY, v text)` and `rows` rows on old (`v` the
/// md5 of the key).
async fn md5_pair(key: &str, rows: u32) -> Result<Pair> {
    let pair = pair_with(&format!("CREATE TABLE t (id {key} PRIMARY KEY, v text)")).await?;
    on(
        &pair.old,
        &format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"),
    )?;
    Ok(pair)
}

/// Scenario 27: SIGKILL mid-table, restart: done chunks are not copied again (attempts
/// and finish times unchanged), the chunk the dead process held is taken over at once,
/// indexes deferred by the killed run are restored by the next one, and both sides end
/// equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backfill_resumes_from_the_chunk_table() -> Result<()> {
    let pair = big_pair().await?;
    let mut child = spawn(
        &pair,
        &[
            "--tables",
            "big",
            "--chunk-rows",
            "500",
            "--jobs",
            "2",
            "--max-rows-per-sec",
            "4000",
            "--defer-indexes",
        ],
    )?;
    let done_before = tokio::task::block_in_place(|| {
        poll_until("some chunks done", Duration::from_secs(60), || {
            Ok(chunks_with(&pair.new, "big", "done").filter(|&n| n >= 5))
        })
    })?;
    child.start_kill().context("killing the backfill")?;
    let killed = wait_backfill(child, Duration::from_secs(20)).await?;
    ensure!(
        killed.code().is_none(),
        "not killed by a signal: {}",
        killed.text()
    );
    let snapshot = on(
        &pair.new,
        "SELECT chunk_no, status, attempts, finished_at FROM _switchyard.backfill_chunks \
         WHERE status IN ('done', 'running') ORDER BY chunk_no",
    )?;
    let total: i64 = on(
        &pair.new,
        "SELECT count(*) FROM _switchyard.backfill_chunks",
    )?
    .parse()?;
    let done_at_kill = chunks_with(&pair.new, "big", "done").unwrap_or(0);
    ensure!(
        done_at_kill >= done_before && done_at_kill < total,
        "killed mid-table: {done_at_kill} of {total} chunks done"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "0",
        "the killed run had deferred the index"
    );

    let run = backfill(&pair, &["--tables", "big", "--jobs", "2"]).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    for line in snapshot.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let now = on(
            &pair.new,
            &format!(
                "SELECT status, attempts, finished_at FROM _switchyard.backfill_chunks WHERE chunk_no = {}",
                f[0]
            ),
        )?;
        let g: Vec<&str> = now.split('|').collect();
        ensure!(g[0] == "done", "chunk {} is {}", f[0], g[0]);
        if f[1] == "done" {
            ensure!(
                g[1] == f[2] && g[2] == f[3],
                "done chunk {} was copied again: before {line}, after {now}",
                f[0]
            );
        } else {
            // Running when the process died: taken over, one more attempt.
            let before: i32 = f[2].parse()?;
            let after: i32 = g[1].parse()?;
            ensure!(
                after == before + 1,
                "chunk {} taken over: {line} → {now}",
                f[0]
            );
        }
    }
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done'"
        )? == "0"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "1",
        "the index was restored"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_deferred WHERE restored_at IS NULL"
        )? == "0"
    );
    assert_verified(&pair, "big").await
}

/// Two processes on one table share its chunks through the chunk table: both do some,
/// none is copied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_table() -> Result<()> {
    let pair = md5_pair("bigint", 20000).await?;
    let flags = [
        "--tables",
        "t",
        "--chunk-rows",
        "500",
        "--jobs",
        "2",
        "--max-rows-per-sec",
        "8000",
    ];
    let a = spawn(&pair, &flags)?;
    let b = spawn(&pair, &flags)?;
    let (a, b) = tokio::join!(
        wait_backfill(a, BACKFILL_TIMEOUT),
        wait_backfill(b, BACKFILL_TIMEOUT)
    );
    let (a, b) = (a?, b?);
    ensure!(a.code() == Some(0), "{}", a.text());
    ensure!(b.code() == Some(0), "{}", b.text());
    let stats = on(
        &pair.new,
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), max(attempts), \
                count(DISTINCT split_part(worker, '/', 1)) FROM _switchyard.backfill_chunks",
    )?;
    let f: Vec<&str> = stats.split('|').collect();
    ensure!(f[0] == f[1], "all chunks done: {stats}");
    ensure!(f[2] == "1", "no chunk copied twice: {stats}");
    ensure!(f[3] == "2", "both processes did chunks: {stats}");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_tables"
        )? == "1"
    );
    assert_verified(&pair, "t").await
}

/// A worker that hangs (SIGSTOP: its connections stay open, so it looks alive) loses its
/// chunk when the lease runs out: another process takes it over and finishes the table;
/// the hung one, continued, finds its chunk gone and does not record over the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_loses_its_chunk_when_the_lease_runs_out() -> Result<()> {
    let pair = md5_pair("int", 6000).await?;
    let a = spawn(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "500",
            "--jobs",
            "1",
            "--max-rows-per-sec",
            "1500",
            "--lease-secs",
            "3",
        ],
    )?;
    let a_pid = a.id().context("pid of the first backfill")? as i32;
    let held = tokio::task::block_in_place(|| {
        poll_until(
            "a chunk running after one done",
            Duration::from_secs(60),
            || {
                let done = chunks_with(&pair.new, "t", "done").unwrap_or(0);
                let running = try_on(
                    &pair.new,
                    "SELECT chunk_no FROM _switchyard.backfill_chunks WHERE status = 'running'",
                );
                Ok(match running {
                    Some(r) if done >= 1 && !r.is_empty() => Some(r),
                    _ => None,
                })
            },
        )
    })?;
    send_signal(a_pid, Signal::SIGSTOP)?;
    // The chunk may have finished between the probe and the signal: take what is running now.
    let held = on(
        &pair.new,
        "SELECT coalesce(string_agg(chunk_no::text, ','), '') FROM _switchyard.backfill_chunks WHERE status = 'running'",
    )
    .map(|r| if r.is_empty() { held.clone() } else { r })?;
    let b = spawn(
        &pair,
        &["--tables", "t", "--jobs", "2", "--lease-secs", "3"],
    )?;
    let taken = tokio::task::block_in_place(|| {
        poll_until("the held chunk taken over", Duration::from_secs(60), || {
            Ok(try_on(
                &pair.new,
                &format!(
                    "SELECT count(*) FROM _switchyard.backfill_chunks \
                     WHERE chunk_no IN ({held}) AND attempts >= 2"
                ),
            )
            .filter(|n| n != "0"))
        })
    });
    send_signal(a_pid, Signal::SIGCONT)?;
    taken?;
    let (a, b) = tokio::join!(
        wait_backfill(a, BACKFILL_TIMEOUT),
        wait_backfill(b, BACKFILL_TIMEOUT)
    );
    let (a, b) = (a?, b?);
    ensure!(b.code() == Some(0), "{}", b.text());
    ensure!(a.code() == Some(0), "{}", a.text());
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done'"
        )? == "0"
    );
    let owners = on(
        &pair.new,
        &format!(
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE chunk_no IN ({held}) \
             AND split_part(split_part(worker, ':', 2), '/', 1) = '{a_pid}'"
        ),
    )?;
    ensure!(
        owners == "0",
        "the hung process recorded over the new owner"
    );
    assert_verified(&pair, "t").await
}

/// Scenario 26: the real proxy dual-writes updates, deletes and inserts (single
/// statements and transactions) to rows of chunks being copied; the end state is equal
/// row by row (no zombie rows, no lost updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_dual_writes_during_the_backfill_end_equal() -> Result<()> {
    let pair = pair_with("CREATE TABLE acc (id int PRIMARY KEY, n int NOT NULL, v text)").await?;
    const ROWS: i32 = 12000;
    on(
        &pair.old,
        &format!("INSERT INTO acc SELECT g, 0, 'old' FROM generate_series(1, {ROWS}) g"),
    )?;
    let proxy = tokio::task::block_in_place(|| ProxyProcess::spawn_for(&pair, &[]))?;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = proxy.client().await?;
        let (stop, ops) = (stop.clone(), ops.clone());
        writers.push(tokio::spawn(async move {
            let mut next_new = ROWS + 1 + w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let (op, id, id2) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..5),
                        rng.random_range(1..=ROWS),
                        rng.random_range(1..=ROWS),
                    )
                };
                let sql = match op {
                    0 => format!("UPDATE acc SET n = n + 1, v = 'upd' WHERE id = {id}"),
                    1 => format!("DELETE FROM acc WHERE id = {id}"),
                    2 => format!(
                        "INSERT INTO acc VALUES ({id}, 100, 'reinserted') ON CONFLICT (id) DO UPDATE SET n = acc.n + 100"
                    ),
                    3 => {
                        next_new += 1;
                        format!("INSERT INTO acc VALUES ({next_new}, 1, 'new')")
                    }
                    _ => format!(
                        "BEGIN; UPDATE acc SET n = n + 1 WHERE id = {id}; DELETE FROM acc WHERE id = {id2}; \
                         INSERT INTO acc VALUES ({id2}, 7, 'tx') ON CONFLICT (id) DO NOTHING; \
                         UPDATE acc SET v = 'tx2' WHERE id = {id2}; COMMIT"
                    ),
                };
                if let Err(e) = client.batch_execute(&sql).await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    // Deadlocks between writers are the old database's answer, as without
                    // the proxy; anything else is a failure.
                    if e.code() != Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) {
                        return Err(anyhow::Error::from(e).context(sql));
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    // Writes are flowing before the backfill starts, and keep flowing while it runs.
    let ops_ref = ops.clone();
    poll_until_async("writes through the proxy", Duration::from_secs(20), || {
        let n = ops_ref.load(Ordering::Relaxed);
        async move { Ok((n >= 20).then_some(())) }
    })
    .await?;
    let ops_at_start = ops.load(Ordering::Relaxed);
    let run = backfill(
        &pair,
        &[
            "--tables",
            "acc",
            "--chunk-rows",
            "400",
            "--jobs",
            "2",
            "--max-rows-per-sec",
            "6000",
        ],
    )
    .await?;
    let ops_during = ops.load(Ordering::Relaxed) - ops_at_start;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        ops_during >= 50,
        "only {ops_during} writes raced the backfill"
    );
    // Lockstep commits reach new a moment after the client's answer.
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    let queued = on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")?;
    if queued != "0" {
        let r = reconciler(&pair, "replay", &[]).await?;
        ensure!(r.code() == Some(0), "{}", r.text());
    }
    let repaired = on(
        &pair.new,
        "SELECT sum(rows_repaired) FROM _switchyard.backfill_chunks",
    )?;
    eprintln!("{ops_during} writes raced the backfill; {repaired} rows repaired by chunk checks");
    drop(proxy);
    assert_verified(&pair, "acc").await
}

/// A delete in flight across the copy and the check: the client deletes a row through the
/// proxy and keeps its transaction open; the mirrored delete has run on new, where the row
/// is not copied yet (it finds nothing). The backfill then copies the row (still there in
/// old's snapshot) and must not check the chunk until that transaction is over: once it
/// commits, the check finds the row on new only and removes it. Checked while the delete
/// was still open, the chunk compared equal and the row stayed on new for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_open_across_the_copy_leaves_no_zombie() -> Result<()> {
    let pair = pair_with("CREATE TABLE z (id int PRIMARY KEY, v text)").await?;
    on(
        &pair.old,
        "INSERT INTO z SELECT g, 'v' FROM generate_series(1, 1000) g",
    )?;
    let proxy = tokio::task::block_in_place(|| ProxyProcess::spawn_for(&pair, &[]))?;
    let client = proxy.client().await?;
    client
        .batch_execute("BEGIN; DELETE FROM z WHERE id = 500")
        .await?;
    // The delete ran on old: its transaction there is open, holding an xid.
    tokio::task::block_in_place(|| {
        poll_until("the open delete on old", Duration::from_secs(20), || {
            let n = on(
                &pair.old,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'idle in transaction' AND backend_xid IS NOT NULL",
            )?;
            Ok((n != "0").then_some(()))
        })
    })?;
    let child = spawn(&pair, &["--tables", "z", "--chunk-rows", "100000"])?;
    // The chunk is copied, and its check waits for the open delete.
    tokio::task::block_in_place(|| {
        poll_until(
            "the check waiting for the delete",
            Duration::from_secs(30),
            || {
                let n = on(
                    &pair.old,
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%virtualtransaction = ANY($1)%' AND pid <> pg_backend_pid()",
                )?;
                Ok((n != "0").then_some(()))
            },
        )
    })?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM z WHERE id = 500")? == "1",
        "the copy brought the row the open transaction deletes"
    );
    client.batch_execute("COMMIT").await?;
    let run = wait_backfill(child, BACKFILL_TIMEOUT).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        on(&pair.new, "SELECT count(*) FROM z WHERE id = 500")? == "0",
        "row 500 left on new: {}",
        run.text()
    );
    drop(proxy);
    assert_verified(&pair, "z").await
}

/// Scenario 26, made deterministic: while one chunk's COPY runs on old (its snapshot
/// taken), the proxy deletes a row of it (the mirrored delete finds nothing on new; the
/// copy then brings a zombie), updates one (the proxy's newer image must not be
/// overwritten by the copy's older one), deletes and re-inserts one, and inserts a new
/// one. The chunk check removes exactly the zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_one_chunk_never_lose_to_the_copy() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, pad text)").await?;
    // Wide rows (20 kB each, 40 MB in all), so the COPY outlasts the socket buffers and
    // stays active on old while the rate limit holds it back.
    on(
        &pair.old,
        "INSERT INTO t SELECT g, 'old', repeat(md5(g::text), 640) FROM generate_series(1, 2000) g",
    )?;
    let proxy = tokio::task::block_in_place(|| ProxyProcess::spawn_for(&pair, &[]))?;
    let client = proxy.client().await?;
    let child = spawn(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "5000",
            "--max-rows-per-sec",
            "700",
        ],
    )?;
    tokio::task::block_in_place(|| {
        poll_until(
            "the chunk's COPY running on old",
            Duration::from_secs(60),
            || {
                Ok(try_on(
                &pair.old,
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY (SELECT%'",
            )
            .filter(|n| n == "1"))
            },
        )
    })?;
    client
        .batch_execute(
            "DELETE FROM t WHERE id = 1999; \
             UPDATE t SET v = 'updated' WHERE id = 1998; \
             DELETE FROM t WHERE id = 1997; INSERT INTO t VALUES (1997, 'reinserted', NULL); \
             INSERT INTO t VALUES (2001, 'new', NULL)",
        )
        .await?;
    let still_copying = on(
        &pair.old,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY (SELECT%'",
    )?;
    ensure!(still_copying == "1", "the writes did not race the copy");
    let run = wait_backfill(child, BACKFILL_TIMEOUT).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    let chunk = on(
        &pair.new,
        "SELECT count(*), sum(rows_copied), sum(rows_inserted), sum(rows_repaired) FROM _switchyard.backfill_chunks",
    )?;
    ensure!(
        chunk == "1|2000|1998|1",
        "one chunk; 2000 rows read, 1997 and 1998 kept as the proxy wrote them, the zombie 1999 repaired: {chunk}"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t WHERE id >= 1996"
        )? == "1996=old,1997=reinserted,1998=updated,2000=old,2001=new"
    );
    drop(proxy);
    assert_verified(&pair, "t").await
}

/// Pause through the control row holds the copy back; resume lets it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_control_row() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY)").await?;
    on(&pair.old, "INSERT INTO t SELECT generate_series(1, 3000)")?;
    let paused = backfill(&pair, &["--pause"]).await?;
    ensure!(paused.code() == Some(0), "{}", paused.text());
    let child = spawn(&pair, &["--tables", "t", "--chunk-rows", "500"])?;
    tokio::task::block_in_place(|| {
        poll_until("the plan", Duration::from_secs(30), || {
            Ok(chunks_with(&pair.new, "t", "pending").filter(|&n| n > 0))
        })
    })?;
    ensure!(
        chunks_with(&pair.new, "t", "done") == Some(0),
        "copied while paused"
    );
    let resumed = backfill(&pair, &["--resume"]).await?;
    ensure!(resumed.code() == Some(0), "{}", resumed.text());
    let run = wait_backfill(child, BACKFILL_TIMEOUT).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(run.stderr.contains("paused"), "{}", run.text());
    assert_verified(&pair, "t").await
}

/// A bad URL fails with exit 2 and a message that names the side without the password;
/// an unknown table fails before anything is written; --dry-run writes nothing and shows
/// a table without a primary key planned whole (`keyless`), which the run then copies
/// with the others (`backfill_keyless.rs` has the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_clearly() -> Result<()> {
    let (_refusing, port) = refusing_port()?;
    let bad = format!("postgres://app:sekrit@127.0.0.1:{port}/app");
    let run = switchyard_tests::backfill::run_backfill(
        &["--old", &bad, "--new", &bad],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(run.code() == Some(2), "{}", run.text());
    ensure!(
        run.stderr.contains("connecting to the old database")
            && run.stderr.contains(&port.to_string()),
        "{}",
        run.text()
    );
    ensure!(
        !run.text().contains("sekrit"),
        "password leaked: {}",
        run.text()
    );

    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nopk (v int);")
        .await?;
    on(
        &pair.old,
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g; INSERT INTO nopk VALUES (1)",
    )?;

    let run = backfill(&pair, &["--tables", "t,nope"]).await?;
    ensure!(run.code() == Some(2), "{}", run.text());
    ensure!(
        run.stderr
            .contains("public.nope does not exist on the old database"),
        "{}",
        run.text()
    );

    let run = backfill(&pair, &["--dry-run"]).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        run.stdout.contains("public.t")
            && run
                .stdout
                .lines()
                .any(|l| l.starts_with("public.nopk") && l.contains("keyless"))
            && run.stdout.contains("nothing was written"),
        "{}",
        run.text()
    );
    ensure!(
        on(
            &pair.new,
            "SELECT to_regclass('_switchyard.backfill_chunks') IS NULL"
        )? == "t",
        "dry run wrote the chunk table"
    );
    ensure!(on(&pair.new, "SELECT count(*) FROM t")? == "0");

    let metrics = tempfile::NamedTempFile::new()?;
    let path = metrics.path().to_string_lossy().to_string();
    let run = backfill(&pair, &["--metrics-file", &path]).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        run.stdout.contains("public.nopk") && !run.stdout.contains("skipped"),
        "{}",
        run.text()
    );
    ensure!(on(&pair.new, "SELECT count(*) FROM nopk WHERE v = 1")? == "1");
    let text = std::fs::read_to_string(&path)?;
    ensure!(
        text.contains("switchyard_backfill_tables_refused 0")
            && text.contains("switchyard_backfill_rows_verified{table=\"public.t\"} 100")
            && text.contains("switchyard_backfill_rows_verified{table=\"public.nopk\"} 1"),
        "metrics file:\n{text}"
    );
    assert_verified(&pair, "t").await
}

/// Tables whose foreign keys form a cycle cannot be ordered: the run refuses them and
/// names `--fk-mode replica`, which then loads them with the checks off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_cycle_needs_replica_mode() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE ca (id int PRIMARY KEY, cb int);
         CREATE TABLE cb (id int PRIMARY KEY, ca int NOT NULL REFERENCES ca);
         ALTER TABLE ca ADD FOREIGN KEY (cb) REFERENCES cb;",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO ca SELECT g, NULL FROM generate_series(1, 300) g;
         INSERT INTO cb SELECT g, 301 - g FROM generate_series(1, 300) g;
         UPDATE ca SET cb = id;",
    )?;
    let run = backfill(&pair, &["--tables", "ca,cb", "--chunk-rows", "50"]).await?;
    ensure!(run.code() == Some(2), "{}", run.text());
    ensure!(
        run.stderr.contains("public.ca") && run.stderr.contains("--fk-mode replica"),
        "{}",
        run.text()
    );
    let run = backfill(
        &pair,
        &[
            "--tables",
            "ca,cb",
            "--chunk-rows",
            "50",
            "--fk-mode",
            "replica",
        ],
    )
    .await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    assert_verified(&pair, "ca,cb").await
}

/// Number of primary keys of `table` on `c`.
fn primary_keys(c: &PgCluster, table: &str) -> Result<String> {
    on(
        c,
        &format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p'"
        ),
    )
}

/// Bulk mode killed while loading (key and index dropped, some chunks copied): the table
/// holds exactly the copied chunks' rows; a restart (without `--bulk`: the table's state
/// decides) copies only the rest, rebuilds the key and the index once, verifies every
/// chunk, and ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bulk_load_resumes_and_restores_the_key() -> Result<()> {
    let pair = big_pair().await?;
    let mut child = spawn(
        &pair,
        &[
            "--tables",
            "big",
            "--chunk-rows",
            "500",
            "--jobs",
            "2",
            "--max-rows-per-sec",
            "4000",
            "--dual-writes",
            "off",
            "--bulk",
        ],
    )?;
    tokio::task::block_in_place(|| {
        poll_until("some chunks copied", Duration::from_secs(60), || {
            Ok(chunks_with(&pair.new, "big", "copied").filter(|&n| n >= 5))
        })
    })?;
    child.start_kill().context("killing the backfill")?;
    let killed = wait_backfill(child, Duration::from_secs(20)).await?;
    ensure!(
        killed.code().is_none(),
        "not killed by a signal: {}",
        killed.text()
    );
    ensure!(
        primary_keys(&pair.new, "big")? == "0",
        "key dropped while loading"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "0",
        "index dropped while loading"
    );
    // Recorded in the COPY's transaction: the rows are exactly the copied chunks'.
    let rows = on(&pair.new, "SELECT count(*) FROM big")?;
    let recorded = on(
        &pair.new,
        "SELECT coalesce(sum(rows_copied), 0) FROM _switchyard.backfill_chunks \
         WHERE status = 'copied'",
    )?;
    ensure!(rows == recorded, "{rows} rows, {recorded} recorded copied");
    let copied = on(
        &pair.new,
        "SELECT chunk_no, attempts, rows_copied, copy_ms FROM _switchyard.backfill_chunks \
         WHERE status = 'copied' ORDER BY chunk_no",
    )?;

    let run = backfill(&pair, &["--tables", "big", "--jobs", "2"]).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        run.stdout.contains("rebuilt big_pkey") && run.stdout.contains("rebuilt big_n"),
        "the summary names what was rebuilt: {}",
        run.text()
    );
    for line in copied.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let now = on(
            &pair.new,
            &format!(
                "SELECT chunk_no, attempts, rows_copied, copy_ms FROM _switchyard.backfill_chunks \
                 WHERE chunk_no = {} AND status = 'done'",
                f[0]
            ),
        )?;
        ensure!(
            now == line,
            "copied chunk copied again: before {line}, after {now}"
        );
    }
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done' OR path <> 'bulk'"
        )? == "0"
    );
    ensure!(primary_keys(&pair.new, "big")? == "1", "key restored");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "1",
        "index restored"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_deferred WHERE restored_at IS NULL"
        )? == "0"
    );
    assert_verified(&pair, "big").await
}

/// The one-pass verification reads the table on two sessions while another worker
/// rebuilds its key (`ADD PRIMARY KEY USING INDEX` wants an `ACCESS EXCLUSIVE` lock). The
/// failpoint holds the pass's first read back until the rebuild's lock request waits on
/// the table: a finished read must not keep its lock until the other read ends, or the
/// three wait on each other for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_and_the_key_rebuild_never_wait_on_each_other() -> Result<()> {
    pass_meets_the_key_rebuild("pass-first-read-waits-for-lock").await
}

/// As above, with the rebuild's lock request queued while the pass sets up its second
/// session (after the first took its lock): a setup that waited there for its own lock
/// would keep every session from reading, the first's lock held, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_setup_never_waits_behind_the_key_rebuild() -> Result<()> {
    pass_meets_the_key_rebuild("pass-setup-waits-for-lock").await
}

async fn pass_meets_the_key_rebuild(failpoint: &str) -> Result<()> {
    let pair = big_pair().await?;
    let run = backfill_with_env(
        &pair,
        &[
            "--tables",
            "big",
            "--chunk-rows",
            "2000",
            "--jobs",
            "2",
            "--dual-writes",
            "off",
        ],
        ("BACKFILL_TEST_FAILPOINT", failpoint),
        Duration::from_secs(60),
    )
    .await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        run.stdout.contains("rebuilt big_pkey"),
        "the key was rebuilt: {}",
        run.text()
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done'"
        )? == "0"
    );
    ensure!(primary_keys(&pair.new, "big")? == "1", "key restored");
    assert_verified(&pair, "big").await
}

/// `pg_stat_progress_create_index` rows for table `t` (1 while the gated build runs).
const BUILDING: &str = "SELECT count(*) FROM pg_stat_progress_create_index \
                        WHERE relid = 't'::regclass";

/// An index build on `t` held inside its scan until [`Gate::open`].
struct Gate {
    keeper: tokio_postgres::Client,
    build: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Gate {
    /// Lets the build finish and waits for it.
    async fn open(self) -> Result<()> {
        self.keeper
            .execute("SELECT pg_advisory_unlock(42)", &[])
            .await?;
        self.build
            .await
            .context("the index build task")?
            .context("the gated index build")?;
        Ok(())
    }
}

/// `t` (20,000 rows) bulk-copied by a run stopped before its verification, the key back
/// as another process's rebuild would leave it (no `ADD PRIMARY KEY` of the next run
/// queues behind the gate), and a user's index build on `t` held by a gate; with the
/// flags of those runs.
async fn copied_table_beside_a_gated_build() -> Result<(Pair, [&'static str; 9], Gate)> {
    let pair = md5_pair("int", 20000).await?;
    let flags = [
        "--tables",
        "t",
        "--chunk-rows",
        "2000",
        "--jobs",
        "2",
        "--dual-writes",
        "off",
        "--bulk",
    ];
    let stopped = backfill_with_env(
        &pair,
        &flags,
        ("BACKFILL_TEST_FAILPOINT", "exit-before-verify"),
        BACKFILL_TIMEOUT,
    )
    .await?;
    ensure!(stopped.code() == Some(3), "{}", stopped.text());
    ensure!(chunks_with(&pair.new, "t", "copied") == Some(10));
    // The gate: closed while the test holds advisory lock 42. It polls with a try-lock,
    // so nothing waits on a lock (which would end the pass's give-way at once).
    on(
        &pair.new,
        "CREATE UNIQUE INDEX t_pkey ON t (id); ALTER TABLE t ADD PRIMARY KEY USING INDEX t_pkey; \
         UPDATE _switchyard.backfill_deferred SET restored_at = now() WHERE restored_at IS NULL; \
         CREATE FUNCTION gate(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ \
         BEGIN \
           WHILE NOT pg_try_advisory_lock_shared(42) LOOP PERFORM pg_sleep(0.01); END LOOP; \
           PERFORM pg_advisory_unlock_shared(42); RETURN $1; \
         END $$",
    )?;
    let url = pair.new.url(switchyard_tests::proxy::DB);
    let (keeper, keeper_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(keeper_conn);
    keeper.execute("SELECT pg_advisory_lock(42)", &[]).await?;
    let (builder, builder_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(builder_conn);
    let build = tokio::spawn(async move {
        builder
            .batch_execute("CREATE INDEX t_gate ON t ((gate(id)))")
            .await
    });
    poll_until(
        "the gated index build to start",
        Duration::from_secs(30),
        || Ok((on(&pair.new, BUILDING)? == "1").then_some(())),
    )?;
    Ok((pair, flags, Gate { keeper, build }))
}

/// An index build on the table outlasts the one-pass verification (a user's, held in its
/// scan by a gate the test opens). The pass's second session gives way to it (a parallel
/// build ends with its leader working alone, and the pass should still have work then),
/// but the first reads every block range meanwhile, so the pass, and the run, end while
/// the build still runs: the pass never waits for a build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_gives_way_to_an_index_build_but_never_waits_for_it() -> Result<()> {
    let (pair, flags, gate) = copied_table_beside_a_gated_build().await?;
    let run = backfill_with_env(
        &pair,
        &flags,
        ("SWITCHYARD_LOG", "switchyard_backfill::table_pass=debug"),
        BACKFILL_TIMEOUT,
    )
    .await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        on(&pair.new, BUILDING)? == "1",
        "the run ended while the build still ran"
    );
    ensure!(
        run.stderr.contains("ranges=[16, 0]"),
        "the first session read every block range, the second gave way: {}",
        run.text()
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE status = 'done' AND checksum_old LIKE 'xxh3:%' AND checksum_new = checksum_old"
        )? == "10",
        "every chunk verified by the pass: {}",
        on(
            &pair.new,
            "SELECT chunk_no, status, checksum_old, checksum_new FROM _switchyard.backfill_chunks ORDER BY 1"
        )?
    );
    gate.open().await?;
    assert_verified(&pair, "t").await
}

/// A pass session held back by an index build holds its lock on the table from the
/// start. Otherwise, released when a lock request (the key's `ADD PRIMARY KEY`, here the
/// test's) waits on the table, it would queue behind that request, which waits for the
/// build: the first session reads the rest alone, or the run waits for the build. The
/// failpoint holds the first read until the test's request waits, so both sessions are
/// set up and idle when the locks are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_session_held_by_an_index_build_already_holds_its_lock() -> Result<()> {
    let (pair, flags, gate) = copied_table_beside_a_gated_build().await?;
    let url = pair.new.url(switchyard_tests::proxy::DB);
    let args = switchyard_tests::backfill::pair_args(&pair, &flags);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = backfill_failpoint_command(&refs, "pass-first-read-waits-others-give-way")?
        .env("SWITCHYARD_LOG", "switchyard_backfill::table_pass=debug")
        .spawn()
        .context("starting switchyard-backfill")?;
    let locked = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                  WHERE l.relation = 't'::regclass AND l.mode = 'AccessShareLock' AND l.granted \
                    AND a.application_name = 'switchyard-backfill'";
    let held = tokio::task::block_in_place(|| {
        poll_until(
            "both pass sessions to hold their lock on the table",
            Duration::from_secs(4),
            || Ok((on(&pair.new, locked)? == "2").then_some(())),
        )
    });
    // The test's own request for the table, queued behind the gated build.
    let (locker, locker_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(locker_conn);
    let lock = tokio::spawn(async move {
        locker
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; ROLLBACK")
            .await
    });
    let run = wait_backfill(child, Duration::from_secs(60)).await;
    gate.open().await?;
    lock.await
        .context("the lock task")?
        .context("the test's lock")?;
    held?;
    let run = run?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE status = 'done' AND checksum_new = checksum_old"
        )? == "10",
        "every chunk verified by the pass"
    );
    assert_verified(&pair, "t").await
}

/// Two bulk processes on one table: no chunk copied twice, the key rebuilt once, every
/// chunk verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bulk_processes_share_one_table() -> Result<()> {
    let pair = md5_pair("bigint", 20000).await?;
    let flags = [
        "--tables",
        "t",
        "--chunk-rows",
        "500",
        "--jobs",
        "2",
        "--max-rows-per-sec",
        "8000",
        "--dual-writes",
        "off",
        "--bulk",
    ];
    let a = spawn(&pair, &flags)?;
    let b = spawn(&pair, &flags)?;
    let (a, b) = tokio::join!(
        wait_backfill(a, BACKFILL_TIMEOUT),
        wait_backfill(b, BACKFILL_TIMEOUT)
    );
    let (a, b) = (a?, b?);
    ensure!(a.code() == Some(0), "{}", a.text());
    ensure!(b.code() == Some(0), "{}", b.text());
    let stats = on(
        &pair.new,
        "SELECT count(*), count(*) FILTER (WHERE status = 'done' AND path = 'bulk'), \
                max(attempts), sum(rows_copied), sum(rows_old) FROM _switchyard.backfill_chunks",
    )?;
    let f: Vec<&str> = stats.split('|').collect();
    ensure!(f[0] == f[1], "all chunks bulk-loaded and done: {stats}");
    ensure!(f[2] == "1", "no chunk copied twice: {stats}");
    ensure!(f[3] == "20000" && f[4] == "20000", "rows: {stats}");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE checksum_new IS DISTINCT FROM checksum_old OR checksum_old NOT LIKE 'xxh3:%'"
        )? == "0",
        "every chunk verified by the one pass over new"
    );
    ensure!(primary_keys(&pair.new, "t")? == "1");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FILTER (WHERE kind = 'primary-key'), count(restored_at) \
             FROM _switchyard.backfill_deferred"
        )? == "1|1",
        "the key was dropped and rebuilt once"
    );
    assert_verified(&pair, "t").await
}

/// Bulk mode verifies after the rebuild: rows changed, removed and added on new between
/// the copy and the verification (the process stops at a failpoint before the rebuild)
/// are found by the chunk checksums and repaired from old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_verification_repairs_what_changed_after_the_copy() -> Result<()> {
    let pair = md5_pair("int", 5000).await?;
    let stopped = backfill_with_env(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "1000",
            "--jobs",
            "2",
            "--dual-writes",
            "off",
            "--bulk",
        ],
        ("BACKFILL_TEST_FAILPOINT", "exit-before-verify"),
        BACKFILL_TIMEOUT,
    )
    .await?;
    ensure!(stopped.code() == Some(3), "{}", stopped.text());
    ensure!(
        chunks_with(&pair.new, "t", "copied") == Some(5),
        "every chunk copied, none verified: {}\n{}",
        on(
            &pair.new,
            "SELECT chunk_no, status, path, checksum_old FROM _switchyard.backfill_chunks ORDER BY 1"
        )?,
        stopped.text()
    );
    ensure!(primary_keys(&pair.new, "t")? == "0");
    on(
        &pair.new,
        "UPDATE t SET v = 'changed' WHERE id = 77; DELETE FROM t WHERE id = 2500; \
         INSERT INTO t VALUES (9999, 'extra')",
    )?;
    let run = backfill(&pair, &["--tables", "t", "--dual-writes", "off"]).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FILTER (WHERE status = 'done'), sum(rows_repaired) \
             FROM _switchyard.backfill_chunks"
        )? == "5|3",
        "three rows repaired"
    );
    // The one pass over new matched the two untouched chunks with the rows hashed on the
    // way from old; the three changed ones were checked again in SQL and repaired.
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FILTER (WHERE checksum_old LIKE 'xxh3:%' AND checksum_new = checksum_old), \
                    count(*) FILTER (WHERE checksum_old NOT LIKE 'xxh3:%' AND rows_repaired > 0) \
             FROM _switchyard.backfill_chunks"
        )? == "2|3",
        "pass and SQL checks: {}",
        on(&pair.new, "SELECT chunk_no, checksum_old, checksum_new, rows_repaired FROM _switchyard.backfill_chunks ORDER BY 1")?
    );
    ensure!(primary_keys(&pair.new, "t")? == "1");
    assert_verified(&pair, "t").await
}

/// Bulk mode (the default with `--dual-writes off`) on a table the one pass cannot verify (a uuid key, an enum column whose
/// binary form differs between clusters in arrays): every chunk is checked range by range
/// in SQL after the rebuild instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_tables_the_pass_cannot_hash_are_checked_in_sql() -> Result<()> {
    let pair = pair_with(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE u (id uuid PRIMARY KEY, m mood, ms mood[]);
         CREATE TABLE e (id int PRIMARY KEY, ms mood[]);",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO u SELECT md5(g::text)::uuid, 'ok', ARRAY['sad', 'happy']::mood[] \
         FROM generate_series(1, 3000) g;
         INSERT INTO e SELECT g, ARRAY['ok']::mood[] FROM generate_series(1, 3000) g",
    )?;
    let run = backfill(
        &pair,
        &[
            "--tables",
            "u,e",
            "--chunk-rows",
            "1000",
            // Bulk mode by default: dual writes declared off.
            "--dual-writes",
            "off",
        ],
    )
    .await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        on(
            &pair.new,
            "SELECT count(*), count(*) FILTER (WHERE status = 'done' AND path = 'bulk' \
                                                 AND checksum_old NOT LIKE 'xxh3:%' \
                                                 AND checksum_old = checksum_new) \
             FROM _switchyard.backfill_chunks"
        )? == "6|6",
        "{}",
        on(&pair.new, "SELECT table_name, chunk_no, status, checksum_old, checksum_new FROM _switchyard.backfill_chunks ORDER BY 1, 2")?
    );
    assert_verified(&pair, "u,e").await
}

/// Direct path (dual writes off): each chunk is checked by hashing the rows as they are
/// relayed from old and reading the range back from new. A chunk that reads back
/// different (here a trigger on new rewrites one row as COPY inserts it; `ENABLE ALWAYS`,
/// as the loading sessions fire no ordinary trigger) is checked again in SQL and the row
/// repaired from old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_chunks_that_read_back_different_are_repaired() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    on(
        &pair.new,
        "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.id = 42 AND current_query() ILIKE 'COPY%' THEN NEW.v := 'tampered'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER tamper BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION tamper();
         ALTER TABLE t ENABLE ALWAYS TRIGGER tamper",
    )?;
    on(
        &pair.old,
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    )?;
    let run = backfill(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "100",
            "--dual-writes",
            "off",
            "--bulk",
            "off",
        ],
    )
    .await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    let stats = on(
        &pair.new,
        "SELECT count(*), \
                count(*) FILTER (WHERE status = 'done' AND path = 'direct' AND rows_repaired = 0 \
                                 AND checksum_old LIKE 'xxh3:%' AND checksum_new = checksum_old), \
                count(*) FILTER (WHERE status = 'done' AND rows_repaired = 1 \
                                 AND checksum_old NOT LIKE 'xxh3:%' AND checksum_new = checksum_old \
                                 AND (lo IS NULL OR lo[1]::int <= 42) AND (hi IS NULL OR 42 < hi[1]::int)) \
         FROM _switchyard.backfill_chunks",
    )?;
    let f: Vec<&str> = stats.split('|').collect();
    ensure!(
        f[2] == "1" && f[1].parse::<i64>()? + 1 == f[0].parse::<i64>()?,
        "one chunk repaired in SQL, the others verified from the stream: {stats}"
    );
    ensure!(
        on(&pair.new, "SELECT v FROM t WHERE id = 42")?
            == on(&pair.old, "SELECT v FROM t WHERE id = 42")?
    );
    assert_verified(&pair, "t").await
}
