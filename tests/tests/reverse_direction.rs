//! The reconciler in the cutover's reverse direction (`writes-new`: new is the primary, old
//! the secondary), against two real clusters. These tests play the proxy's part by hand:
//! transactions prepared on old under reverse gids (`switchyard:n:<new's xid>`), retry
//! records in new's `_switchyard.retry_log`, bypass writes captured in new's change log.
//!
//! New's transaction ids are pushed thousands past old's first, so that a new-to-old id
//! looked up on old (the wrong database) fails ("in the future") instead of passing by
//! luck, and an old-to-new id looked up on new finds some other, committed transaction.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_core::direction::Direction;
use switchyard_core::retry::{embedded_insert_sql, Origin, RetryRecord};
use switchyard_tests::mirror::{
    assert_verified, current_xid, on, open_transaction, pair_with, reconciler, rows,
};
use switchyard_tests::proxy::{Pair, DB};
use switchyard_tests::reconciler::{row_record, ReconcilerProcess};

const SCHEMA: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, n int); \
                      CREATE TABLE u (id int PRIMARY KEY, v text)";

/// Hands out about `n` transaction ids on `c` (subtransactions that write take one each).
fn burn_xids(c: &switchyard_tests::PgCluster, n: u32) -> Result<()> {
    on(
        c,
        &format!(
            "CREATE TABLE burn (i int); \
             DO $$ BEGIN FOR i IN 1..{n} LOOP BEGIN INSERT INTO burn VALUES (i); \
             EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$; DROP TABLE burn"
        ),
    )?;
    Ok(())
}

/// Runs `sql` in a transaction on `c` that ends with `end` (COMMIT or ROLLBACK); its id.
async fn xact(c: &tokio_postgres::Client, sql: &str, end: &str) -> Result<String> {
    c.batch_execute("BEGIN").await?;
    c.batch_execute(sql).await?;
    let xid = current_xid(c).await?;
    c.batch_execute(end).await?;
    Ok(xid)
}

/// Runs `sql` on `c` in a transaction prepared as `gid`, as the proxy does on the secondary.
async fn prepare(c: &tokio_postgres::Client, sql: &str, gid: &str) -> Result<()> {
    c.batch_execute(&format!("BEGIN; {sql}; PREPARE TRANSACTION '{gid}'"))
        .await
        .with_context(|| format!("preparing {gid}"))
}

fn prepared(c: &switchyard_tests::PgCluster) -> Result<String> {
    on(
        c,
        "SELECT coalesce(string_agg(gid, ',' ORDER BY gid), '') FROM pg_prepared_xacts",
    )
}

async fn recover_json(pair: &Pair) -> Result<(Option<i32>, serde_json::Value, String)> {
    let run = reconciler(
        pair,
        "recover",
        &["--min-age-secs", "0", "--format", "json"],
    )
    .await?;
    let report = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("the JSON report:\n{}", run.text()))?;
    Ok((run.code(), report, run.text()))
}

/// `recover` finishes both directions, each by its own primary: reverse gids prepared on
/// old by new's status (committed → committed, rolled back → rolled back, running →
/// pending), the forward gid prepared on new by old's. The report names each gid's
/// direction; the proxy's forward-only call leaves the reverse gids alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_resolves_each_direction_from_its_own_primary() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    burn_xids(&pair.new, 5000)?;
    let (old, new) = (pair.old.connect(DB).await?, pair.new.connect(DB).await?);
    // Reverse: new's transactions, and what the proxy prepared on old for each.
    let row = |id: i32, v: &str| format!("INSERT INTO t VALUES ({id}, '{v}', 0)");
    let committed = xact(&new, &row(1, "committed on new"), "COMMIT").await?;
    let aborted = xact(&new, &row(2, "rolled back on new"), "ROLLBACK").await?;
    let (running_client, running) = open_transaction(&pair.new, &row(3, "running on new")).await?;
    let old_side = pair.old.connect(DB).await?;
    for (id, v, xid) in [
        (1, "committed on new", &committed),
        (2, "rolled back on new", &aborted),
        (3, "running on new", &running),
    ] {
        prepare(&old_side, &row(id, v), &Direction::NewToOld.gid(xid)).await?;
    }
    // Forward: old's transaction rolled back; new prepared its copy.
    let forward = xact(&old, &row(4, "rolled back on old"), "ROLLBACK").await?;
    let forward_gid = Direction::OldToNew.gid(&forward);
    prepare(&new, &row(4, "rolled back on old"), &forward_gid).await?;

    use switchyard_core::recover::{count_in_doubt, resolve_in_doubt};
    let none = Duration::ZERO;
    ensure!(count_in_doubt(&old, Direction::NewToOld, none).await? == 3);
    ensure!(count_in_doubt(&old, Direction::OldToNew, none).await? == 0);
    ensure!(count_in_doubt(&new, Direction::OldToNew, none).await? == 1);
    // The proxy's call knows only the forward direction.
    let r = resolve_in_doubt(&old, &new, none).await?;
    ensure!(
        r.rolled_back == vec![forward_gid.clone()] && r.committed.is_empty(),
        "{r:?}"
    );
    ensure!(
        prepared(&pair.old)?.split(',').count() == 3,
        "the forward-only call touched old: {}",
        prepared(&pair.old)?
    );
    // Once more for the reconciler, which does both.
    prepare(&new, &row(4, "rolled back on old"), &forward_gid).await?;

    let (code, report, text) = recover_json(&pair).await?;
    ensure!(code == Some(1), "one transaction still runs on new: {text}");
    let rev = &report["directions"]["new-to-old"];
    let fwd = &report["directions"]["old-to-new"];
    let gid = |x: &str| serde_json::json!([Direction::NewToOld.gid(x)]);
    ensure!(
        rev["committed"] == gid(&committed)
            && rev["rolled_back"] == gid(&aborted)
            && rev["pending"] == gid(&running)
            && fwd["rolled_back"] == serde_json::json!([forward_gid])
            && fwd["committed"] == serde_json::json!([]),
        "{text}"
    );
    ensure!(
        prepared(&pair.old)? == Direction::NewToOld.gid(&running)
            && prepared(&pair.new)?.is_empty(),
        "left prepared: old {:?}, new {:?}",
        prepared(&pair.old)?,
        prepared(&pair.new)?
    );
    running_client.batch_execute("COMMIT").await?;
    let run = reconciler(&pair, "recover", &["--min-age-secs", "0"])
        .await?
        .exits(0)?;
    ensure!(
        run.stdout.contains(&format!(
            "{}: committed (new-to-old: prepared on old, decided by new)",
            Direction::NewToOld.gid(&running)
        )),
        "{}",
        run.text()
    );
    ensure!(prepared(&pair.old)?.is_empty());
    ensure!(
        rows(&pair.old, "t")? == "(1,\"committed on new\",0)\n(3,\"running on new\",0)",
        "{}",
        rows(&pair.old, "t")?
    );
    assert_verified(&pair, "t").await?;
    Ok(())
}

/// A row record of `"public".<table>` key `id`, as a proxy writes it in `writes-new`.
fn reverse_record(xid: &str, table: &str, id: i32) -> RetryRecord {
    let origin = Origin::new(Direction::NewToOld, "test", Some(xid.to_string()));
    row_record(origin, table, id, "the old database did not take it")
}

fn statement_record(xid: &str, sql: &str) -> RetryRecord {
    let origin = Origin::new(Direction::NewToOld, "test", Some(xid.to_string()));
    RetryRecord::statement(&origin, 1, sql, "the old database did not take it".into())
}

/// Capture and the retry log on new, as the proxy sets them up when new becomes the
/// primary.
async fn new_as_primary(pair: &Pair) -> Result<tokio_postgres::Client> {
    let new = pair.new.connect(DB).await?;
    switchyard_core::capture::install::install(&new).await?;
    new.batch_execute(switchyard_core::retry::EMBEDDED_SCHEMA_SQL)
        .await?;
    Ok(new)
}

/// A client transaction on new that old did not take: its changes (not captured: the
/// proxy drained them for the lockstep that failed) and its retry records, committed
/// together.
async fn unmirrored(
    new: &tokio_postgres::Client,
    sql: &str,
    records: &[(&str, i32)],
    stmt: Option<&str>,
) -> Result<()> {
    new.batch_execute(&format!("BEGIN; SET LOCAL switchyard.apply = on; {sql}"))
        .await?;
    let xid = current_xid(new).await?;
    let mut recs: Vec<RetryRecord> = records
        .iter()
        .map(|(t, id)| reverse_record(&xid, t, *id))
        .collect();
    recs.extend(stmt.map(|s| statement_record(&xid, s)));
    new.batch_execute(&embedded_insert_sql(&recs)?).await?;
    new.batch_execute("COMMIT").await?;
    Ok(())
}

fn count(c: &switchyard_tests::PgCluster, sql: &str) -> Result<i64> {
    on(c, sql)?
        .parse()
        .with_context(|| format!("{sql} did not return a number"))
}

fn same(pair: &Pair, table: &str) -> Result<()> {
    let (o, n) = (rows(&pair.old, table)?, rows(&pair.new, table)?);
    ensure!(o == n, "{table} differs:\n--- old\n{o}\n--- new\n{n}");
    Ok(())
}

/// `replay` drains new's retry log into old (rows re-read from new, a statement run on old
/// once) and new's change log (a session straight on new), and counts them as new-to-old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_drains_new_logs_into_old() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    burn_xids(&pair.new, 5000)?;
    let seed = "INSERT INTO t VALUES (1, 'stale', 1), (2, 'deleted on new', 1)";
    on(&pair.old, seed)?;
    on(&pair.new, seed)?;
    let new = new_as_primary(&pair).await?;
    unmirrored(
        &new,
        "UPDATE t SET v = 'fresh', n = 2 WHERE id = 1; DELETE FROM t WHERE id = 2; \
         INSERT INTO t VALUES (3, 'inserted on new', 3)",
        &[("t", 1), ("t", 2), ("t", 3)],
        Some("CREATE INDEX t_v ON public.t (v)"),
    )
    .await?;
    // Straight on new, past every proxy: captured in new's change log.
    on(
        &pair.new,
        "INSERT INTO u VALUES (1, 'bypass'), (2, 'two'); UPDATE u SET v = 'bypass, updated' WHERE id = 1",
    )?;
    ensure!(count(&pair.new, "SELECT count(*) FROM _switchyard.capture_log")? > 0);
    ensure!(
        rows(&pair.old, "t")?.contains("stale"),
        "old untouched so far"
    );
    // The cutover's pre-flight counts: 0 where the logs do not exist (old, here).
    use switchyard_core::{capture::log::pending, retry::backlog};
    let old = pair.old.connect(DB).await?;
    ensure!(backlog(&old).await? == 0 && pending(&old).await? == 0);
    ensure!(backlog(&new).await? == 4, "{}", backlog(&new).await?);
    ensure!(pending(&new).await? >= 2, "{}", pending(&new).await?);

    let run = reconciler(&pair, "replay", &["--format", "json"])
        .await?
        .exits(0)?;
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("the JSON report:\n{}", run.text()))?;
    let rev = &report["directions"]["new-to-old"];
    ensure!(
        rev["records_done"] == 4
            && rev["rows_resynced"] == 3
            && rev["statements_applied"] == 1
            && rev["change_log_events"].as_u64().unwrap_or(0) >= 2
            && rev["writes_outside_proxy"] == rev["change_log_events"]
            && report["directions"]["old-to-new"]["records_done"] == 0
            && report["backlog"] == 0,
        "{}",
        run.text()
    );
    ensure!(backlog(&new).await? == 0 && pending(&new).await? == 0);
    ensure!(
        rows(&pair.new, "t")? == "(1,fresh,2)\n(3,\"inserted on new\",3)",
        "new is the source of truth and stays as it was: {}",
        rows(&pair.new, "t")?
    );
    same(&pair, "t")?;
    same(&pair, "u")?;
    ensure!(
        on(&pair.old, "SELECT to_regclass('public.t_v') IS NOT NULL")? == "t",
        "the statement record ran on old"
    );
    ensure!(
        count(
            &pair.old,
            "SELECT count(*) FROM _switchyard.applied_statements"
        )? >= 1,
        "statement records are marked once-only on old"
    );
    assert_verified(&pair, "t,u").await?;
    Ok(())
}

/// `replay --follow` started before the cutover (new without any of Switchyard's logs)
/// notices new's logs once they appear and keeps draining both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follow_picks_up_new_logs_when_they_appear() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    let (old_url, new_url) = (pair.old.url(DB), pair.new.url(DB));
    let mut follow = tokio::task::block_in_place(|| {
        ReconcilerProcess::spawn(
            &["replay", "--follow", "--old", &old_url, "--new", &new_url],
            &[],
        )
    })?;
    // Old's retry log exists once the first pass ran.
    follow.poll_while_running("replay's first pass", Duration::from_secs(60), |_| {
        Ok((on(
            &pair.old,
            "SELECT to_regclass('_switchyard.retry_log') IS NOT NULL",
        )? == "t")
            .then_some(()))
    })?;
    let new = new_as_primary(&pair).await?;
    unmirrored(
        &new,
        "INSERT INTO t VALUES (7, 'via the retry log', 7)",
        &[("t", 7)],
        None,
    )
    .await?;
    on(&pair.new, "INSERT INTO u VALUES (8, 'via the change log')")?;
    follow
        .poll_while_running("new's changes on old", Duration::from_secs(60), |_| {
            let arrived = count(&pair.old, "SELECT count(*) FROM t WHERE id = 7")? == 1
                && count(&pair.old, "SELECT count(*) FROM u WHERE id = 8")? == 1;
            Ok(arrived.then_some(()))
        })
        .with_context(|| follow.log_text())?;
    same(&pair, "t")?;
    same(&pair, "u")?;
    Ok(())
}
