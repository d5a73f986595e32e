//! `switchyard-backfill` while the real proxy dual-writes (scenario 26): updates,
//! deletes and inserts racing the chunks being copied, and a delete left open across a
//! chunk's copy, end equal row by row.

use anyhow::{ensure, Result};
use rand::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::backfill::{
    backfill, old_rows_behind_proxy, spawn_backfill, try_on, wait_backfill, BACKFILL_TIMEOUT,
};
use switchyard_tests::mirror::{assert_verified, on, reconciler, wait_on};
use switchyard_tests::wait::{poll_until, poll_until_async};

/// Scenario 26: the real proxy dual-writes updates, deletes and inserts (single
/// statements and transactions) to rows of chunks being copied; the end state is equal
/// row by row (no zombie rows, no lost updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_dual_writes_during_the_backfill_end_equal() -> Result<()> {
    const ROWS: i32 = 12000;
    let (pair, proxy) = old_rows_behind_proxy(
        "CREATE TABLE acc (id int PRIMARY KEY, n int NOT NULL, v text)",
        &format!("INSERT INTO acc SELECT g, 0, 'old' FROM generate_series(1, {ROWS}) g"),
    )
    .await?;
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
    wait_on(
        &pair.new,
        "new's prepared transactions committed",
        Duration::from_secs(10),
        "SELECT count(*) FROM pg_prepared_xacts",
        "0",
    )?;
    let queued = on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")?;
    if queued != "0" {
        reconciler(&pair, "replay", &[]).await?.exits(0)?;
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
    let (pair, proxy) = old_rows_behind_proxy(
        "CREATE TABLE z (id int PRIMARY KEY, v text)",
        "INSERT INTO z SELECT g, 'v' FROM generate_series(1, 1000) g",
    )
    .await?;
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
    let child = spawn_backfill(&pair, &["--tables", "z", "--chunk-rows", "100000"])?;
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
    let run = wait_backfill(child, BACKFILL_TIMEOUT).await?.exits(0)?;
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
    // Wide rows (20 kB each, 40 MB in all), so the COPY outlasts the socket buffers and
    // stays active on old while the rate limit holds it back.
    let (pair, proxy) = old_rows_behind_proxy(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, pad text)",
        "INSERT INTO t SELECT g, 'old', repeat(md5(g::text), 640) FROM generate_series(1, 2000) g",
    )
    .await?;
    let client = proxy.client().await?;
    let child = spawn_backfill(
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
    wait_backfill(child, BACKFILL_TIMEOUT).await?.exits(0)?;
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
