//! `switchyard-backfill` and tables without a primary key, against real clusters: copied
//! whole in one snapshot and verified as multisets (duplicates and NULLs included), next
//! to keyed tables; refused when new already holds rows, or while the real proxy
//! dual-writes without `--lock-keyless`; copied under the lock while writes race it, a
//! writer to the table waiting for the copy and writers to other tables not; a
//! copy killed midway leaves nothing behind and the next run copies the table once; a
//! copy that does not verify is failed, not kept.

use anyhow::{ensure, Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::backfill::{
    backfill, backfill_failpoint_command, backfill_with_env, old_rows_behind_proxy, pair_args,
    pair_with_old_rows, wait_backfill, BACKFILL_TIMEOUT,
};
use switchyard_tests::mirror::{
    assert_nothing_queued, eventually, on, pgbench_pair, wait_on, PGBENCH_TABLES,
};
use switchyard_tests::proxy::Pair;
use switchyard_tests::wait::poll_until_async;

/// Every distinct row of `table` on `c` with how many copies it has: the table as a
/// multiset, in a stable order.
fn multiset(c: &switchyard_tests::PgCluster, table: &str) -> Result<String> {
    on(
        c,
        &format!("SELECT t::text, count(*) FROM {table} t GROUP BY 1 ORDER BY 1"),
    )
}

/// Asserts `table` holds the same rows, each as many times, on both sides.
fn assert_same_multiset(pair: &Pair, table: &str) -> Result<()> {
    let (old, new) = (multiset(&pair.old, table)?, multiset(&pair.new, table)?);
    ensure!(
        old == new,
        "{table} differs:\n--- old\n{old}\n--- new\n{new}"
    );
    Ok(())
}

fn count(c: &switchyard_tests::PgCluster, sql: &str) -> Result<i64> {
    on(c, sql)?
        .trim()
        .parse()
        .with_context(|| format!("{sql}: not a number"))
}

/// The keyless chunk of `table` as `status/attempts`.
fn chunk_state(pair: &Pair, table: &str) -> Result<String> {
    on(
        &pair.new,
        &format!(
            "SELECT status || '/' || attempts FROM _switchyard.backfill_chunks \
             WHERE table_name = '\"public\".\"{table}\"'"
        ),
    )
}

const BAG: &str = "CREATE TABLE bag (a int, b text, c jsonb, d numeric);
     CREATE TABLE keyed (id int PRIMARY KEY, v text);";

/// Rows with many exact duplicates and NULLs in every column.
const BAG_ROWS: &str =
    "INSERT INTO bag SELECT g % 50, CASE WHEN g % 7 = 0 THEN NULL ELSE 'v' || (g % 13) END, \
       CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('k', g % 3) END, \
       CASE WHEN g % 11 = 0 THEN NULL ELSE (g % 4) / 3.0 END \
     FROM generate_series(1, 6000) g;
     INSERT INTO bag VALUES (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL);
     INSERT INTO keyed SELECT g, md5(g::text) FROM generate_series(1, 3000) g;";

/// A pair with [`BAG`] on both sides and [`BAG_ROWS`] on old alone.
async fn bag_pair() -> Result<Pair> {
    pair_with_old_rows(BAG, BAG_ROWS).await
}

/// A backfill run exits 1, bag's line saying it was refused and naming `fix`.
async fn bag_refused(pair: &Pair, fix: &str) -> Result<()> {
    let run = backfill(pair, &[]).await?.exits(1)?;
    ensure!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("public.bag") && l.contains("refused") && l.contains(fix)),
        "{}",
        run.text()
    );
    Ok(())
}

/// Duplicates and NULLs arrive as often as on old; the run verifies, reports the table
/// done with its checksum, and a second run copies nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_nulls_are_copied_and_verified() -> Result<()> {
    let pair = bag_pair().await?;
    let dir = tempfile::tempdir()?;
    let metrics = dir.path().join("metrics.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let run = backfill(&pair, &["--format", "json", "--metrics-file", &metrics_arg])
        .await?
        .exits(0)?;
    assert_same_multiset(&pair, "bag")?;
    assert_same_multiset(&pair, "keyed")?;
    ensure!(
        count(
            &pair.new,
            "SELECT count(*) FROM (SELECT 1 FROM bag t GROUP BY t::text HAVING count(*) > 1) d"
        )? > 10,
        "the test data should hold duplicates"
    );
    ensure!(
        count(
            &pair.new,
            "SELECT count(*) FROM bag WHERE a IS NULL AND b IS NULL AND c IS NULL AND d IS NULL"
        )? == 2
    );

    let doc: serde_json::Value = serde_json::from_str(run.stdout.trim()).context("JSON summary")?;
    let bag = doc["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["table"] == "public.bag"))
        .with_context(|| format!("bag in the summary: {doc}"))?;
    ensure!(bag["done"] == 1 && bag["chunks"] == 1, "{bag}");
    ensure!(bag["rows_old"] == 6002 && bag["rows_new"] == 6002, "{bag}");
    ensure!(
        doc["refused"].as_array().is_some_and(|r| r.is_empty()),
        "{doc}"
    );
    let checksums = on(
        &pair.new,
        "SELECT checksum_old = checksum_new AND checksum_old LIKE 'multiset:6002:%' \
         FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"bag\"'",
    )?;
    ensure!(checksums == "t", "recorded checksums: {checksums}");
    let prom = std::fs::read_to_string(&metrics)?;
    ensure!(
        prom.contains("switchyard_backfill_tables_refused 0")
            && prom.contains("switchyard_backfill_chunks{table=\"public.bag\",status=\"done\"} 1"),
        "{prom}"
    );

    // Done stays done: no second copy on top of the first.
    backfill(&pair, &[]).await?.exits(0)?;
    ensure!(chunk_state(&pair, "bag")? == "done/1");
    assert_same_multiset(&pair, "bag")
}

/// pgbench's history (no primary key) is copied alongside its keyed tables, from real
/// pgbench transactions, and the run exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_history_is_copied_with_the_keyed_tables() -> Result<()> {
    let pair = pgbench_pair().await?;
    tokio::task::block_in_place(|| -> Result<()> {
        let out = std::process::Command::new(switchyard_tests::clients::pgbench_bin())
            .args(["-t", "300", "-c", "2", "-n"])
            .arg(pair.old.url(switchyard_tests::proxy::DB))
            .output()?;
        ensure!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })?;
    on(
        &pair.new,
        &format!("TRUNCATE {}", PGBENCH_TABLES.join(", ")),
    )?;
    ensure!(count(&pair.old, "SELECT count(*) FROM pgbench_history")? == 600);
    let run = backfill(&pair, &[]).await?.exits(0)?;
    ensure!(
        run.stdout.contains("public.pgbench_history") && !run.stdout.contains("refused"),
        "{}",
        run.text()
    );
    for t in PGBENCH_TABLES {
        assert_same_multiset(&pair, t)?;
    }
    Ok(())
}

/// A keyless table that already has rows on new is refused with the table and the fix
/// named, left as it was; the other tables are copied; the run exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_with_rows_on_new_is_refused() -> Result<()> {
    let pair = bag_pair().await?;
    on(
        &pair.new,
        "INSERT INTO bag VALUES (1, 'already here', NULL, NULL)",
    )?;
    bag_refused(&pair, "TRUNCATE public.bag").await?;
    assert_same_multiset(&pair, "keyed")?;
    ensure!(multiset(&pair.new, "bag")? == "(1,\"already here\",,)|1");
    ensure!(
        chunk_state(&pair, "bag")? == "pending/0",
        "no attempt spent"
    );

    // Emptied, the table is copied by the next run.
    on(&pair.new, "TRUNCATE bag")?;
    backfill(&pair, &[]).await?.exits(0)?;
    assert_same_multiset(&pair, "bag")
}

/// Writers through the real proxy (which installs change capture on old and heartbeats
/// there): without `--lock-keyless` the keyless table is refused and the keyed one still
/// copied; with it, the copy runs under the lock while the writers keep going, and both
/// sides end equal, duplicates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_writes_need_the_lock_and_end_equal_under_it() -> Result<()> {
    let (pair, proxy) = old_rows_behind_proxy(BAG, BAG_ROWS).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let client = proxy.client().await?;
        let (stop, ops) = (stop.clone(), ops.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Inserts of duplicates, deletes and updates of one copy among equal rows.
                let sql = match i % 4 {
                    0 => format!("INSERT INTO bag VALUES ({}, 'dup', NULL, 1), ({}, 'dup', NULL, 1)", i % 5, i % 5),
                    1 => format!("DELETE FROM bag WHERE ctid = (SELECT ctid FROM bag WHERE a = {} LIMIT 1)", (i + w) % 50),
                    2 => format!("UPDATE bag SET b = 'upd{w}' WHERE ctid = (SELECT ctid FROM bag WHERE a = {} LIMIT 1)", (i * 3) % 50),
                    _ => format!("INSERT INTO keyed VALUES ({}, 'w') ON CONFLICT (id) DO UPDATE SET v = 'again'", 10_000 + w * 1_000_000 + i),
                };
                client
                    .batch_execute(&sql)
                    .await
                    .with_context(|| sql.clone())?;
                ops.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let wait_ops = |n: u64| {
        let ops = ops.clone();
        poll_until_async(
            "writes through the proxy",
            Duration::from_secs(20),
            move || {
                let got = ops.load(Ordering::Relaxed);
                async move { Ok((got >= n).then_some(())) }
            },
        )
    };
    wait_ops(20).await?;

    bag_refused(&pair, "--lock-keyless").await?;
    ensure!(chunk_state(&pair, "bag")? == "pending/0");
    ensure!(
        on(&pair.new, "SELECT count(*) FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"keyed\"' AND status <> 'done'")? == "0",
        "the keyed table is copied all the same"
    );

    // The mirrored inserts reached new's table: the locked copy replaces them.
    ensure!(count(&pair.new, "SELECT count(*) FROM bag")? > 0);
    let before = ops.load(Ordering::Relaxed);
    let locked = backfill(&pair, &["--lock-keyless"]).await?;
    let during = ops.load(Ordering::Relaxed) - before;
    // Writes go on after the copy released the lock.
    wait_ops(ops.load(Ordering::Relaxed) + 20).await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    ensure!(locked.code() == Some(0), "{}", locked.text());
    ensure!(chunk_state(&pair, "bag")? == "done/1");
    ensure!(during >= 10, "only {during} writes raced the locked run");
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    // New took every mirrored write.
    assert_nothing_queued(&pair)?;
    drop(proxy);
    assert_same_multiset(&pair, "bag")?;
    assert_same_multiset(&pair, "keyed")
}

/// `--lock-keyless` holds old's table in SHARE mode until the copy is committed on new: a
/// write to it through the proxy waits (seen in old's `pg_locks`) while a write to a keyed
/// table goes through; released, the waiting write lands once, on top of the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_copy_makes_the_tables_writers_wait_and_no_one_else() -> Result<()> {
    let (pair, proxy) = old_rows_behind_proxy(BAG, BAG_ROWS).await?;
    let hold = tempfile::tempdir()?;
    let release = hold.path().join("release");
    let failpoint = format!("hold-keyless-until:{}", release.display());
    let args = pair_args(&pair, &["--lock-keyless"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = backfill_failpoint_command(&refs, &failpoint)?
        .spawn()
        .context("starting switchyard-backfill")?;
    let held = "SELECT count(*) FROM pg_locks \
                WHERE relation = 'bag'::regclass AND mode = 'ShareLock' AND granted";
    // A backfill that ends (or stalls) without taking the lock says why.
    let locked = poll_until_async(
        "the copy to hold bag in SHARE mode",
        BACKFILL_TIMEOUT,
        || {
            let exited = child.try_wait().map(|s| s.is_some());
            let old = &pair.old;
            async move {
                if exited? {
                    return Ok(Some(false));
                }
                Ok((on(old, held)? == "1").then_some(true))
            }
        },
    )
    .await;
    if !matches!(locked, Ok(true)) {
        let _ = child.start_kill();
        let run = wait_backfill(child, Duration::from_secs(20)).await?;
        anyhow::bail!(
            "the copy never held bag in SHARE mode ({:?}); the backfill:\n{}",
            locked.err(),
            run.text()
        );
    }

    let writer = proxy.client().await?;
    let insert = tokio::spawn(async move {
        writer
            .batch_execute("INSERT INTO bag VALUES (77, 'during the copy', NULL, NULL)")
            .await
    });
    wait_on(
        &pair.old,
        "the write to bag to wait for the lock",
        Duration::from_secs(20),
        "SELECT count(*) FROM pg_locks \
         WHERE relation = 'bag'::regclass AND mode = 'RowExclusiveLock' AND NOT granted",
        "1",
    )?;
    let other = proxy.client().await?;
    tokio::time::timeout(
        Duration::from_secs(20),
        other.batch_execute("INSERT INTO keyed VALUES (-1, 'not blocked')"),
    )
    .await
    .context("a write to another table waited for the copy")??;
    ensure!(
        !insert.is_finished(),
        "the write to bag went through the lock"
    );

    std::fs::write(&release, b"")?;
    wait_backfill(child, BACKFILL_TIMEOUT).await?.exits(0)?;
    tokio::time::timeout(Duration::from_secs(20), insert)
        .await
        .context("the write to bag after the copy")???;
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    ensure!(
        count(
            &pair.new,
            "SELECT count(*) FROM bag WHERE b = 'during the copy'"
        )? == 1,
        "the write that waited is on new once"
    );
    drop(proxy);
    assert_same_multiset(&pair, "bag")?;
    assert_same_multiset(&pair, "keyed")
}

/// Killed in the middle of the copy (rows already streamed into new's transaction): new
/// keeps nothing, the chunk is claimed again by the next run, and the table ends equal
/// with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_midway_is_copied_again_without_duplicates() -> Result<()> {
    let pair = bag_pair().await?;
    backfill_with_env(
        &pair,
        &["--tables", "bag"],
        ("BACKFILL_TEST_FAILPOINT", "exit-mid-keyless"),
        BACKFILL_TIMEOUT,
    )
    .await?
    .exits(3)?;
    ensure!(chunk_state(&pair, "bag")? == "running/1");
    ensure!(
        count(&pair.new, "SELECT count(*) FROM bag")? == 0,
        "nothing committed"
    );

    backfill(&pair, &["--tables", "bag"]).await?.exits(0)?;
    ensure!(chunk_state(&pair, "bag")? == "done/2");
    ensure!(count(&pair.new, "SELECT count(*) FROM bag")? == 6002);
    assert_same_multiset(&pair, "bag")
}

/// A copy whose checksums differ (a trigger on new that fires even on the loading
/// sessions changes a column) is failed with both sides' figures, nothing is kept on new,
/// and the run exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_does_not_verify_is_failed() -> Result<()> {
    let pair = bag_pair().await?;
    on(
        &pair.new,
        "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN NEW.b := 'tampered'; RETURN NEW; END$$;
         CREATE TRIGGER tamper BEFORE INSERT ON bag FOR EACH ROW EXECUTE FUNCTION tamper();
         ALTER TABLE bag ENABLE ALWAYS TRIGGER tamper;",
    )?;
    backfill(&pair, &["--tables", "bag", "--max-attempts", "1"])
        .await?
        .exits(1)?;
    ensure!(chunk_state(&pair, "bag")? == "failed/1");
    let error = on(
        &pair.new,
        "SELECT last_error FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"bag\"'",
    )?;
    ensure!(
        error.contains("differs after its copy") && error.contains("old has 6002 rows"),
        "{error}"
    );
    ensure!(count(&pair.new, "SELECT count(*) FROM bag")? == 0);
    Ok(())
}
