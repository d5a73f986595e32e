//! Shadow reads against two real clusters (scenarios 21–25 of the test scenarios): the proxy
//! samples the client's reads, runs them on both databases off the client's path, and
//! compares normalized results. Differences are made by writing to the new cluster
//! directly; each test reads the proxy's counters from `/api/status` and `/api/mismatches`.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::time::Duration;
use switchyard_proxy::config::MirrorMode;
use switchyard_tests::mirror::{init_tracing, on};
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair, DB};
use switchyard_tests::shadow::{
    count, entry, mismatches, settled, shadow_config, shadow_status, wait_shadow,
};
use switchyard_tests::PgCluster;

#[path = "shadow_reads/reporting.rs"]
mod reporting;

async fn pair(old: &str, new: &str) -> Result<Pair> {
    pair_with(old, new, PgCluster::builder(), PgCluster::builder()).await
}

async fn pair_with(
    old_schema: &str,
    new_schema: &str,
    old: switchyard_tests::PgClusterBuilder,
    new: switchyard_tests::PgClusterBuilder,
) -> Result<Pair> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(move || Pair::start_with(old, new)).await??;
    on(&pair.old, old_schema).context("schema on old")?;
    on(&pair.new, new_schema).context("schema on new")?;
    Ok(pair)
}

fn totals(s: &Value) -> (u64, u64, u64, u64, u64) {
    let t = &s["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    (
        n("sampled"),
        n("matched"),
        n("confirmed"),
        n("transient"),
        n("errors"),
    )
}

/// Old and new hold the same data in different physical orders, under different column
/// types (numeric scale, json/jsonb), collations and server time zones.
const ITEMS_OLD: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, f8 float8, f4 float4,
    amount numeric(10,2), at timestamptz, name text COLLATE "C", doc json);
INSERT INTO items VALUES
 (1, 1, '-0', 0.1, 1.5, '2024-03-01 12:00:00+00', 'a', '{"b": 1,  "a": [1, 2]}'),
 (2, 1, 'NaN', 1.5, 2, '2024-03-01 13:30:00.25+00', 'B', '{"x": null}'),
 (3, 2, 0.1, '-0', 0.25, '2024-06-01 00:00:00+00', 'b', '[1, {"k": "v"}]'),
 (4, 2, 1e-300, 'NaN', 10, '1999-12-31 23:59:59.5+00', 'A', '{}');
CREATE SCHEMA other;
CREATE TABLE other.only_other (x int);
INSERT INTO other.only_other VALUES (1), (2);
"#;

const ITEMS_NEW: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, f8 float8, f4 float4,
    amount numeric(12,4), at timestamptz, name text COLLATE "und-x-icu", doc jsonb);
INSERT INTO items VALUES
 (4, 2, 1e-300, 'NaN', 10, '1999-12-31 18:59:59.5-05', 'A', '{}'),
 (3, 2, 0.1, '0', 0.25, '2024-06-01 00:00:00+00', 'b', '[1,{"k":"v"}]'),
 (2, 1, 'NaN', 1.5, 2, '2024-03-01 13:30:00.25+00', 'B', '{"x":null}'),
 (1, 1, '0', 0.1, 1.5, '2024-03-01 12:00:00+00', 'a', '{"a":[1,2],"b":1}');
CREATE SCHEMA other;
CREATE TABLE other.only_other (x int);
INSERT INTO other.only_other VALUES (2), (1);
"#;

/// Scenario 21: equal data never mismatches (row order, ties, LIMIT, floats, numeric scale,
/// time zones, collations, json/jsonb; simple and extended protocol, binary parameters);
/// unequal data is confirmed and sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_data_matches_under_normalization_and_differences_are_confirmed() -> Result<()> {
    let pair = pair_with(
        ITEMS_OLD,
        ITEMS_NEW,
        PgCluster::builder().setting("timezone", "UTC"),
        PgCluster::builder().setting("timezone", "America/New_York"),
    )
    .await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let c = connect_proxy(&proxy).await?;

    // Extended protocol (tokio-postgres prepares every statement; parameters in binary).
    c.query("SELECT * FROM items", &[]).await?;
    c.query("SELECT grp, id FROM items ORDER BY grp", &[])
        .await?;
    c.query("SELECT id, grp FROM items LIMIT 2", &[]).await?;
    // Text under different collations: equal as values (a text sort that orders them
    // differently is a collation mismatch, see shadow_collation.rs).
    c.query("SELECT name FROM items ORDER BY id", &[]).await?;
    for id in 1..=4i32 {
        c.query(
            "SELECT id, at, f8, f4, amount FROM items WHERE id = $1",
            &[&id],
        )
        .await?;
    }
    c.query(
        "SELECT grp, count(*), sum(amount), sum(f8) FROM items GROUP BY grp ORDER BY grp",
        &[],
    )
    .await?;
    // Simple protocol, with a session setting that must be replayed on both sides.
    c.simple_query("SELECT doc, f4 FROM items ORDER BY id")
        .await?;
    c.simple_query("SET TimeZone = 'Asia/Kolkata'").await?;
    c.simple_query("SELECT at::text AS at_text, at FROM items ORDER BY at")
        .await?;
    // A table that exists only in schema `other`: without the session's search_path on the
    // shadow side, both sides would fail.
    c.simple_query("SET search_path = other, public").await?;
    c.query("SELECT x FROM only_other", &[]).await?;

    let s = wait_shadow(&proxy, "12 comparisons to finish", |s| {
        settled(s) && totals(s).0 >= 12
    })
    .await?;
    let (sampled, matched, confirmed, transient, errors) = totals(&s);
    ensure!(
        confirmed == 0 && transient == 0 && errors == 0 && matched == sampled,
        "equal data must match everywhere: {s:#}"
    );
    ensure!(
        count(entry(&s, "SELECT name FROM items ORDER BY id"), "matched") == 1,
        "text under different collations was compared: {s:#}"
    );
    ensure!(count(entry(&s, "at_text"), "matched") == 1, "{s:#}");
    ensure!(count(entry(&s, "only_other"), "matched") == 1, "{s:#}");

    // Now make the data differ on new only.
    on(&pair.new, "UPDATE items SET amount = 9.99 WHERE id = 1")?;
    c.simple_query("RESET search_path").await?;
    c.query("SELECT * FROM items", &[]).await?;
    c.query(
        "SELECT id, at, f8, f4, amount FROM items WHERE id = $1",
        &[&1i32],
    )
    .await?;
    let s = wait_shadow(&proxy, "both differences to be confirmed", |s| {
        settled(s)
            && count(entry(s, "SELECT * FROM items"), "confirmed") == 1
            && count(entry(s, "WHERE id = $1"), "confirmed") == 1
    })
    .await?;
    ensure!(totals(&s).3 == 0, "nothing was transient: {s:#}");
    let (m, _) = mismatches(&proxy).await?;
    let samples = m["samples"].as_array().context("samples")?;
    ensure!(samples.len() == 2, "two confirmed samples: {m:#}");
    for sample in samples {
        ensure!(sample["difference"] == "rows", "{sample:#}");
        ensure!(sample["kind"] == "shadow", "{sample:#}");
        let old_rows = sample["old"]["only_here"].as_array().context("old rows")?;
        let new_rows = sample["other"]["only_here"]
            .as_array()
            .context("new rows")?;
        ensure!(
            old_rows.len() == 1 && new_rows.len() == 1,
            "one differing row per side: {sample:#}"
        );
    }
    proxy.shutdown().await;
    Ok(())
}

const COUNTERS: &str = "
CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL);
INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g;";

/// Scenario 22 (deterministic half): a difference that is gone by the re-check is counted
/// as transient, never confirmed, and leaves no sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_difference_gone_by_the_recheck_is_transient() -> Result<()> {
    let pair = pair(COUNTERS, COUNTERS).await?;
    on(&pair.new, "UPDATE counters SET v = 7 WHERE id = 1")?;
    let mut cfg = shadow_config(&pair);
    // Long enough to repair the difference in between, deterministically.
    cfg.shadow.recheck_delay_ms = 3000;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    c.query("SELECT v FROM counters WHERE id = $1", &[&1i32])
        .await?;
    wait_shadow(&proxy, "the first comparison to find the difference", |s| {
        s["queue"]["rechecks_pending"].as_u64() == Some(1)
    })
    .await?;
    on(&pair.new, "UPDATE counters SET v = 0 WHERE id = 1")?;
    let s = wait_shadow(&proxy, "the re-check", settled).await?;
    let e = entry(&s, "FROM counters");
    ensure!(
        count(e, "transient") == 1 && count(e, "confirmed") == 0,
        "{s:#}"
    );
    let (m, _) = mismatches(&proxy).await?;
    ensure!(m["samples"].as_array().is_some_and(Vec::is_empty), "{m:#}");
    proxy.shutdown().await;
    Ok(())
}

/// Scenario 22: a writer updating rows through the proxy (dual writes) while another session
/// reads them: differences seen while commits land are re-checked, and none is confirmed.
/// Reads not shadowed run as A/A baselines (old against old): their noise floor is zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_not_confirmed() -> Result<()> {
    let pair = pair(COUNTERS, COUNTERS).await?;
    let mut cfg = shadow_config(&pair);
    cfg.mirror.mode = MirrorMode::TwoPhase;
    cfg.shadow.sample_rate = 0.7;
    cfg.shadow.baseline_rate = 1.0;
    cfg.shadow.queue_size = 10_000;
    let proxy = start_proxy(cfg).await?;
    let writer = connect_proxy(&proxy).await?;
    let reader = connect_proxy(&proxy).await?;
    let write = tokio::spawn(async move {
        for i in 0..300i32 {
            writer
                .execute(
                    "UPDATE counters SET v = v + 1 WHERE id = $1",
                    &[&(i % 5 + 1)],
                )
                .await?;
        }
        anyhow::Ok(())
    });
    let mut reads = 0;
    while !write.is_finished() {
        reader.query("SELECT id, v FROM counters", &[]).await?;
        reader
            .query("SELECT sum(v) FROM counters WHERE id <= $1", &[&3i32])
            .await?;
        reads += 2;
    }
    write.await??;
    ensure!(
        reads > 10,
        "the reader ran alongside the writer ({reads} reads)"
    );
    let s = wait_shadow(&proxy, "every comparison to finish", settled).await?;
    let (sampled, matched, confirmed, _transient, errors) = totals(&s);
    ensure!(
        confirmed == 0,
        "concurrent writes confirmed as mismatches: {s:#}"
    );
    ensure!(errors == 0, "{s:#}");
    ensure!(sampled > 0 && matched > 0, "{s:#}");
    let baseline = &s["baseline"];
    ensure!(
        baseline["sampled"].as_u64().unwrap_or(0) > 0 && baseline["confirmed"] == 0,
        "A/A baseline ran and found no lasting noise: {s:#}"
    );
    // After the writer stopped, both sides agree.
    reader.query("SELECT id, v FROM counters", &[]).await?;
    proxy.shutdown().await;
    Ok(())
}

const SIDE_EFFECTS: &str = "
CREATE SEQUENCE s;
CREATE TABLE audit (x int);
CREATE FUNCTION write_audit() RETURNS int LANGUAGE sql AS
  'INSERT INTO audit VALUES (1) RETURNING x';
CREATE TABLE t (id int PRIMARY KEY, note text);
INSERT INTO t VALUES (1, 'one'), (2, 'two');";

/// Scenario 23: nextval, FOR UPDATE/SHARE, advisory locks and a writing function never
/// change the new database; the writing function is stopped by the read-only shadow
/// transaction (on both sides) and counted as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reads_never_write() -> Result<()> {
    let pair = pair(SIDE_EFFECTS, SIDE_EFFECTS).await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let c = connect_proxy(&proxy).await?;
    for _ in 0..3 {
        c.query("SELECT nextval('s')", &[]).await?;
        c.simple_query("SELECT nextval('s')").await?;
        c.query("SELECT * FROM t WHERE id = $1 FOR UPDATE", &[&1i32])
            .await?;
        c.simple_query("SELECT * FROM t FOR SHARE").await?;
        c.query("SELECT write_audit()", &[]).await?;
        c.simple_query("SELECT pg_advisory_lock(42), pg_advisory_unlock(42)")
            .await?;
        c.query("SELECT note FROM t WHERE id = $1", &[&2i32])
            .await?;
    }
    let s = wait_shadow(&proxy, "the sampled reads to finish", |s| {
        settled(s)
            && count(entry(s, "FROM t WHERE id = $1"), "matched") == 3
            && count(entry(s, "write_audit"), "skipped") == 3
    })
    .await?;
    let audit = entry(&s, "write_audit").context("write_audit entry")?;
    ensure!(
        audit["skip_reasons"]["read_only_violation"] == 3,
        "stopped by the read-only transaction: {s:#}"
    );
    for never in ["nextval", "FOR UPDATE", "FOR SHARE", "advisory"] {
        ensure!(
            entry(&s, never).is_none(),
            "{never} must never be sampled: {s:#}"
        );
    }
    ensure!(
        on(&pair.new, "SELECT last_value || ',' || is_called FROM s")? == "1,false",
        "the sequence on new was not advanced"
    );
    ensure!(on(&pair.new, "SELECT count(*) FROM audit")? == "0");
    // The client's own three calls wrote to old; the shadow's runs on old wrote nothing.
    ensure!(on(&pair.old, "SELECT count(*) FROM audit")? == "3");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )? == "0"
    );
    proxy.shutdown().await;
    Ok(())
}

/// Scenario 24: a secondary blocked by a lock, then stopped. Client reads keep succeeding
/// while the lock is held (they never wait for the shadow); the shadow work that does not
/// fit is dropped and counted, and the failures are counted as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_down_secondary_does_not_touch_clients() -> Result<()> {
    let pair = pair(COUNTERS, COUNTERS).await?;
    let mut cfg = shadow_config(&pair);
    cfg.shadow.concurrency = 1;
    cfg.shadow.queue_size = 2;
    cfg.shadow.statement_timeout_ms = 3000;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;

    // Hold a lock on new that every shadow read of the table waits behind.
    let (locker, conn) = pair.new.config(DB).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        .await?;
    // 40 reads while the lock is held: if any waited for its shadow it would take the
    // statement timeout; the whole batch has less than that.
    let reads = async {
        for i in 0..40i32 {
            let rows = c
                .query("SELECT v FROM counters WHERE id = $1", &[&(i % 5 + 1)])
                .await?;
            ensure!(rows.len() == 1);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(2), reads)
        .await
        .context("client reads waited for the blocked secondary")??;
    let s = shadow_status(&proxy).await?;
    ensure!(
        s["queue"]["dropped"].as_u64().unwrap_or(0) >= 30,
        "shadow work beyond one running and two queued is dropped: {s:#}"
    );
    let s = wait_shadow(&proxy, "the blocked comparison to time out", |s| {
        entry(s, "FROM counters").and_then(|e| e["error_kinds"]["timeout"].as_u64()) >= Some(1)
    })
    .await?;
    ensure!(count(entry(&s, "FROM counters"), "confirmed") == 0, "{s:#}");
    locker.batch_execute("COMMIT").await?;

    // Stop the secondary: client reads go on, shadow failures are counted.
    tokio::task::block_in_place(|| pair.new.stop_fast())?;
    for i in 0..20i32 {
        c.query("SELECT v FROM counters WHERE id = $1", &[&(i % 5 + 1)])
            .await?;
    }
    let s = wait_shadow(&proxy, "connection errors to be counted", |s| {
        settled(s)
            && entry(s, "FROM counters").is_some_and(|e| {
                e["error_kinds"]["connect"].as_u64().unwrap_or(0)
                    + e["error_kinds"]["unavailable"].as_u64().unwrap_or(0)
                    + e["error_kinds"]["io"].as_u64().unwrap_or(0)
                    >= 1
            })
    })
    .await?;
    ensure!(totals(&s).2 == 0, "errors are not mismatches: {s:#}");

    // Back up: the next comparisons match again.
    tokio::task::block_in_place(|| pair.new.start())?;
    let errors_before = totals(&s).4;
    let matched_before = totals(&s).1;
    // Connection failures mark new down for a second; reads in that second fail fast.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.query("SELECT v FROM counters WHERE id = $1", &[&1i32])
        .await?;
    let s = wait_shadow(&proxy, "a comparison after new came back", |s| {
        settled(s) && totals(s).1 > matched_before
    })
    .await?;
    ensure!(
        totals(&s).4 == errors_before,
        "no error once new is back: {s:#}"
    );

    // Restarted while the shadow's connections sat idle: they are dead; the comparison
    // retries on a new connection instead of counting an error.
    tokio::task::block_in_place(|| -> Result<()> {
        pair.new.stop_fast()?;
        pair.new.start()
    })?;
    c.query("SELECT v FROM counters WHERE id = $1", &[&2i32])
        .await?;
    let s = wait_shadow(&proxy, "a comparison after a restart", |s| {
        settled(s) && totals(s).1 > matched_before + 1
    })
    .await?;
    ensure!(
        totals(&s).4 == errors_before,
        "stale pooled connections are not errors: {s:#}"
    );
    proxy.shutdown().await;
    Ok(())
}

const DRIVERS: &str = r#"
import asyncio, sys
import asyncpg, psycopg

async def with_asyncpg(url):
    c = await asyncpg.connect(url)
    for i in range(1, 4):
        await c.fetch("SELECT id, v FROM counters WHERE id = $1", i)
    st = await c.prepare("SELECT sum(v) FROM counters WHERE id <= $1")
    await st.fetch(5)
    await c.close()

asyncio.run(with_asyncpg(sys.argv[1]))
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    c.execute("SELECT v FROM counters WHERE id = %s", (2,)).fetchall()
    c.execute("SELECT v FROM counters WHERE id = %s", (3,), prepare=True).fetchall()
"#;

/// Drivers in another language (asyncpg: named prepared statements, binary parameters;
/// psycopg 3: server-side binding, a prepared statement): their reads are sampled and match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_reads_are_compared() -> Result<()> {
    let python = switchyard_tests::clients::python_bin()?;
    let pair = pair(COUNTERS, COUNTERS).await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let url = switchyard_tests::proxy::proxy_url(&proxy, PgCluster::USER);
    switchyard_tests::clients::run_client(
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(DRIVERS)
            .arg(&url),
        "python drivers",
        Duration::from_secs(120),
    )
    .await?
    .success("python drivers")?;
    let s = wait_shadow(&proxy, "the drivers' reads to be compared", |s| {
        settled(s)
            && count(
                entry(s, "SELECT id, v FROM counters WHERE id = $1"),
                "matched",
            ) == 3
            && count(entry(s, "sum(v)"), "matched") == 1
            && count(entry(s, "SELECT v FROM counters WHERE id = $1"), "matched") == 2
    })
    .await?;
    let (_, _, confirmed, transient, errors) = totals(&s);
    ensure!(confirmed + transient + errors == 0, "{s:#}");
    proxy.shutdown().await;
    Ok(())
}
