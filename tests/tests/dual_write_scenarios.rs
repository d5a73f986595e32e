//! More dual-write scenarios (8, 11, 12, 13 of the test scenarios), each ending with the
//! reconciler's verify: a slow secondary, replay of odd records, sessions updating rows in
//! opposite orders, and one large UPDATE.

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::clients::pgbench_clean;
use switchyard_tests::mirror::{
    assert_mirrored, assert_nothing_queued, assert_same, assert_verified, eventually, on,
    pair_with, pgbench_pair, proxied, reconciler, Proxied, PGBENCH_TABLES,
};
use switchyard_tests::proxy::{batch_each, batch_fails, connect_proxy, proxy_url, start_proxy, DB};
use switchyard_tests::PgCluster;
use tokio_postgres::error::SqlState;

/// Scenario 8: a row locked on the secondary by someone else costs the client at most the
/// secondary timeout; the change is queued and replays once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_secondary_costs_at_most_its_timeout() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0)")
        .await?;
    let mut cfg = pair.config();
    cfg.mirror.secondary_lock_timeout_ms = 300;
    cfg.mirror.secondary_statement_timeout_ms = 500;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    let locker = pair.new.connect(DB).await?;
    locker
        .batch_execute("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE")
        .await?;
    let started = Instant::now();
    c.batch_execute("UPDATE t SET n = n + 1 WHERE id = 1")
        .await?;
    let took = started.elapsed();
    // The bound is the configured timeouts (0.3 s lock, 0.5 s statement, 0.5 s client
    // margin); anything near the 60 s default of a stuck lock means it was not bounded.
    ensure!(took < Duration::from_secs(5), "the client waited {took:?}");
    ensure!(on(&pair.old, "SELECT n FROM t")? == "1");
    ensure!(
        on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")? == "1",
        "the key is queued"
    );
    locker.batch_execute("ROLLBACK").await?;
    reconciler(&pair, "replay", &[]).await?.exits(0)?;
    assert_verified(&pair, "t").await
}

/// Scenario 11: duplicate, stale and spurious records and records of deleted rows all
/// converge; `n = n + 1` through the proxy twice is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_converges_whatever_the_records() -> Result<()> {
    let Proxied { pair, proxy } =
        proxied("CREATE TABLE t (id int PRIMARY KEY, n int, v text)").await?;
    let c = connect_proxy(&proxy).await?;
    batch_each(
        &c,
        &[
            "INSERT INTO t SELECT g, 0, 'v' FROM generate_series(1, 10) g",
            "UPDATE t SET n = n + 1 WHERE id = 1",
            "UPDATE t SET n = n + 1 WHERE id = 1",
        ],
    )
    .await?;
    // Applied twice.
    eventually(&pair.new, "SELECT n FROM t WHERE id = 1", "2")?;
    drop(c);
    drop(proxy);
    // Drift the proxy did not cause, and records that name it, several times over.
    on(
        &pair.new,
        "UPDATE t SET v = 'stale' WHERE id = 2; DELETE FROM t WHERE id = 3",
    )?;
    on(
        &pair.old,
        "DELETE FROM t WHERE id = 4; INSERT INTO t VALUES (11, 0, 'only old')",
    )?;
    let record = |id: i32, n: i32| {
        format!(
            "INSERT INTO _switchyard.retry_log (idempotency_key, kind, table_name, key, origin, reason) \
             VALUES ('test-{id}-{n}', 'row', '\"public\".\"t\"', '{{\"id\": {id}}}', '{{\"instance\": \"test\", \"ordinal\": 0}}', 'test')"
        )
    };
    for id in [2, 2, 3, 4, 4, 11, 999] {
        for n in 0..2 {
            on(&pair.old, &record(id, n))?;
        }
    }
    let metrics = tempfile::NamedTempFile::new()?;
    let path = metrics.path().to_string_lossy().to_string();
    let _run = reconciler(&pair, "replay", &["--metrics-file", &path])
        .await?
        .exits(0)?;
    let text = std::fs::read_to_string(&path)?;
    ensure!(
        text.contains("switchyard_replay_backlog 0")
            && text.contains("switchyard_replay_records_total{outcome=\"applied\"} 14"),
        "metrics file:\n{text}"
    );
    // A second run over the same (re-inserted) records changes nothing.
    on(&pair.old, &record(2, 9))?;
    reconciler(&pair, "replay", &[]).await?.exits(0)?;
    assert_nothing_queued(&pair)?;
    assert_verified(&pair, "t").await
}

/// Scenario 12: sessions updating overlapping rows in opposite orders: the old database
/// may report deadlocks (as it would without the proxy), but nothing deadlocks across the
/// two databases and the new one ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_updates_stay_in_order() -> Result<()> {
    let Proxied { pair, proxy } = proxied("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t SELECT g, 0 FROM generate_series(1, 4) g").await?;
    let mut tasks = Vec::new();
    for s in 0..4 {
        let c = connect_proxy(&proxy).await?;
        tasks.push(tokio::spawn(async move {
            let mut deadlocks = 0u32;
            for i in 0..20 {
                let (a, b) = if (s + i) % 2 == 0 { (1, 2) } else { (2, 1) };
                let third = 3 + (i % 2);
                let sql = format!(
                    "BEGIN; UPDATE t SET n = n + 1 WHERE id = {a}; UPDATE t SET n = n * 2 % 1000003 WHERE id = {b}; \
                     UPDATE t SET n = n + {s} WHERE id = {third}; COMMIT"
                );
                match c.batch_execute(&sql).await {
                    Ok(()) => {}
                    Err(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                        deadlocks += 1;
                        c.batch_execute("ROLLBACK").await?;
                    }
                    Err(e) => return Err(anyhow::Error::from(e).context(sql)),
                }
            }
            anyhow::Ok(deadlocks)
        }));
    }
    for t in tasks {
        t.await??;
    }
    let queued = on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")?;
    ensure!(
        queued == "0",
        "{queued} records queued: the secondary should have kept up"
    );
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    assert_verified(&pair, "t").await
}

/// Scenario 13: one UPDATE of many rows streams through in batches and both sides end
/// equal (the proxy's memory on such statements is measured in bench/dual_writes.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_update_streams_through() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE big (id int PRIMARY KEY, n int, pad text); \
         INSERT INTO big SELECT g, 0, repeat('x', 50) FROM generate_series(1, 200000) g",
    )
    .await?;
    let proxy = start_proxy(pair.config()).await?;
    let c = connect_proxy(&proxy).await?;
    let n = c
        .execute("UPDATE big SET n = n + 1, pad = md5(id::text)", &[])
        .await?;
    ensure!(n == 200_000, "updated {n}");
    c.batch_execute("DELETE FROM big WHERE id % 10 = 0").await?;
    assert_nothing_queued(&pair)?;
    assert_verified(&pair, "big").await
}

/// A MERGE with bound parameters (extended protocol) on a table named through the session's
/// search_path: its rows reach new in lockstep as images, nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameterised_merge_is_mirrored_in_lockstep() -> Result<()> {
    let pair = pair_with(
        "CREATE SCHEMA app; CREATE TABLE app.\"Accounts\" (id int PRIMARY KEY, v int); \
         CREATE TABLE src (id int PRIMARY KEY); INSERT INTO src SELECT generate_series(1, 5)",
    )
    .await?;
    let proxy = start_proxy(pair.config()).await?;
    let c = connect_proxy(&proxy).await?;
    c.batch_execute("SET search_path = app, public").await?;
    let n = c
        .execute(
            "MERGE INTO \"Accounts\" a USING src s ON a.id = s.id \
             WHEN MATCHED THEN UPDATE SET v = $1 WHEN NOT MATCHED THEN INSERT VALUES (s.id, $1)",
            &[&7i32],
        )
        .await?;
    ensure!(n == 5, "the client sees the primary's row count, got {n}");
    ensure!(on(&pair.old, "SELECT sum(v) FROM app.\"Accounts\"")? == "35");
    eventually(&pair.new, "SELECT sum(v) FROM app.\"Accounts\"", "35")?;
    assert_nothing_queued(&pair)?;
    assert_verified(&pair, "app.\"Accounts\"").await
}

/// `mirror.drain_every_writes`: a short transaction reaches new at its commit; a longer
/// one streams its changes to new while it runs (new holds the rows before the commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_transactions_stream_to_new_and_short_ones_drain_at_commit() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, n int)").await?;
    let mut cfg = pair.config();
    cfg.mirror.drain_every_writes = 3;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    let applier_in_transaction = "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'switchyard-mirror' AND state = 'idle in transaction'";
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1, 1); INSERT INTO t VALUES (2, 2)")
        .await?;
    // Two writes, under the threshold: nothing was sent to new yet.
    ensure!(on(&pair.new, applier_in_transaction)? == "0");
    c.batch_execute("INSERT INTO t VALUES (3, 3)").await?;
    // The third drains: new's transaction holds the rows before the client commits.
    eventually(&pair.new, applier_in_transaction, "1")?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM t")? == "0",
        "not committed on new yet"
    );
    c.batch_execute("INSERT INTO t VALUES (4, 4); COMMIT")
        .await?;
    eventually(
        &pair.new,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
        "1,2,3,4",
    )?;
    assert_verified(&pair, "t").await?;
    Ok(())
}

/// `mirror.drain_every_writes = 1`: a drain behind every write, in both protocols. Failed
/// statements, savepoints rolled back and pgbench in every mode leave both databases equal
/// row by row, with nothing queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_behind_every_write_keeps_both_sides_equal() -> Result<()> {
    let pair = pgbench_pair().await?;
    let schema = "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL CHECK (n >= 0))";
    on(&pair.old, schema)?;
    on(&pair.new, schema)?;
    let mut cfg = pair.config();
    cfg.mirror.drain_every_writes = 1;
    let proxy = start_proxy(cfg).await?;
    let mut c = connect_proxy(&proxy).await?;
    let applier_in_transaction = "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'switchyard-mirror' AND state = 'idle in transaction'";

    let mut tx = c.transaction().await?;
    tx.execute("INSERT INTO t VALUES ($1, $2)", &[&1i32, &10i32])
        .await?;
    // Drained behind the statement: new holds the row before the commit.
    eventually(&pair.new, applier_in_transaction, "1")?;
    tx.execute("UPDATE t SET n = n + $1 WHERE id = $2", &[&5i32, &1i32])
        .await?;
    let sp = tx.savepoint("sp").await?;
    sp.execute("INSERT INTO t VALUES ($1, $2)", &[&2i32, &20i32])
        .await?;
    sp.rollback().await?;
    tx.execute("INSERT INTO t VALUES ($1, $2)", &[&3i32, &30i32])
        .await?;
    tx.commit().await?;

    // A statement that fails on old: its transaction reaches neither side.
    let tx = c.transaction().await?;
    tx.execute("INSERT INTO t VALUES ($1, $2)", &[&4i32, &40i32])
        .await?;
    let e = tx
        .execute("UPDATE t SET n = $1 WHERE id = $2", &[&-1i32, &1i32])
        .await
        .err()
        .context("the CHECK constraint let a negative n through")?;
    ensure!(e.code() == Some(&SqlState::CHECK_VIOLATION), "{e}");
    tx.rollback().await?;
    ensure!(
        on(
            &pair.old,
            "SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM t"
        )? == "1:15,3:30"
    );

    // The same with simple-protocol Queries of one statement each.
    c.batch_execute("BEGIN").await?;
    c.batch_execute("INSERT INTO t VALUES (5, 50)").await?;
    c.batch_execute("UPDATE t SET n = n + 1 WHERE id = 5")
        .await?;
    let e = c
        .batch_execute("UPDATE t SET n = -1 WHERE id = 3")
        .await
        .err()
        .context("the CHECK constraint let a negative n through")?;
    ensure!(e.code() == Some(&SqlState::CHECK_VIOLATION), "{e}");
    // No statement runs in a failed transaction.
    let sql = "INSERT INTO t VALUES (6, 60)";
    batch_fails(&c, sql, &SqlState::IN_FAILED_SQL_TRANSACTION).await?;
    c.batch_execute("ROLLBACK").await?;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (7, 70)")
        .await?;
    c.batch_execute("UPDATE t SET n = n + 1 WHERE id = 7")
        .await?;
    c.batch_execute("COMMIT").await?;
    ensure!(
        on(
            &pair.old,
            "SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM t"
        )? == "1:15,3:30,7:71"
    );

    let url = proxy_url(&proxy, PgCluster::USER);
    for mode in ["simple", "extended", "prepared"] {
        pgbench_clean(&url, &["-n", "-c", "4", "-t", "100", "-M", mode]).await?;
    }
    assert_same(&pair, &["t"])?;
    assert_mirrored(&pair, &PGBENCH_TABLES)
}
