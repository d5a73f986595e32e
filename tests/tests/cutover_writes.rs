//! The cutover's write phase on real clusters with two proxy instances: writes move to new
//! (new captured, old kept equal as the secondary in the same lockstep) and back, under
//! pgbench in all three protocol modes, with no client error and both databases equal row by
//! row without replay; a write flip held back by a transaction left open is abandoned and
//! the load goes on where it was.

use anyhow::{ensure, Result};
use std::time::Duration;
use switchyard_proxy::RunningProxy;
use switchyard_tests::cutover::{
    admin, config, flip, one, pair_client, pgbench_without_failures, phase_of, port_of,
    refused_flip, wait_active,
};
use switchyard_tests::http::get;
use switchyard_tests::mirror::{assert_same, eventually, init_tracing, on, PGBENCH_TABLES};
use switchyard_tests::proxy::{connect_proxy, start_proxy};

fn pgbench(
    p: &RunningProxy,
    mode: &'static str,
    secs: u32,
) -> tokio::task::JoinHandle<std::io::Result<std::process::Output>> {
    let url = switchyard_tests::proxy::proxy_url(p, "postgres");
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(switchyard_tests::clients::pgbench_bin())
            .args([
                "-n",
                "-M",
                mode,
                "-c",
                "2",
                "-j",
                "2",
                "-T",
                &secs.to_string(),
            ])
            .args(["-b", "tpcb-like@3", "-b", "select-only@1"])
            .arg(url)
            .output()
    })
}

/// Nothing went to a retry log, on either side (in writes-new old is the secondary and
/// new keeps the log).
fn nothing_queued_on_either_side(pair: &switchyard_tests::proxy::Pair) -> Result<()> {
    for c in [&pair.old, &pair.new] {
        ensure!(on(c, "SELECT count(*) FROM _switchyard.retry_log")? == "0");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_move_to_new_and_back_under_pgbench_without_client_errors() -> Result<()> {
    init_tracing();
    let pair = switchyard_tests::mirror::pgbench_pair().await?;
    let (old_port, new_port) = (pair.old.port(), pair.new.port());
    let a = start_proxy(config(&pair, "a")).await?;
    let b = start_proxy(config(&pair, "b")).await?;
    let simple = pgbench(&a, "simple", 10);
    let extended = pgbench(&b, "extended", 10);
    let prepared = pgbench(&a, "prepared", 10);
    let mut epochs = Vec::new();
    for phase in [
        "reads-new",
        "writes-new",
        "reads-new",
        "writes-new",
        "shadow",
        "writes-new",
    ] {
        // Paces the flips through the run; what is waited for is each flip's answer.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (status, report) = flip(&a, &format!(r#"{{"to": "{phase}"}}"#)).await?;
        ensure!(
            status == 200,
            "flip to {phase} under load: {status} {report}"
        );
        ensure!(report["converged"] == true, "{report}");
        epochs.push(report["epoch"].as_i64().unwrap_or(-1));
        for p in [&a, &b] {
            ensure!(phase_of(p).await?.0 == phase);
        }
    }
    ensure!(epochs == [1, 2, 3, 4, 5, 6], "{epochs:?}");
    for (what, run) in [
        ("simple", simple),
        ("extended", extended),
        ("prepared", prepared),
    ] {
        pgbench_without_failures(what, run.await??)?;
    }
    // New is the primary: a fresh session and the old ones are answered there.
    let c = connect_proxy(&b).await?;
    ensure!(
        port_of(&c).await? == new_port,
        "writes-new: the primary is new"
    );
    let moved = get(admin(&a)?, "/metrics").await?.1;
    ensure!(
        moved.contains("switchyard_sessions_moved_total{to=\"new\"}")
            && moved.contains("switchyard_sessions_moved_total{to=\"old\"}"),
        "sessions moved both ways under load"
    );
    ensure!(
        moved.contains("switchyard_cutover_write_pause_seconds_count"),
        "the write pauses are measured"
    );
    let status: serde_json::Value = serde_json::from_str(&get(admin(&a)?, "/api/status").await?.1)?;
    ensure!(
        status["mirror"]["direction"] == "new-to-old"
            && status["mirror"]["secondary"] == "old"
            && status["mirror"]["rows_mirrored"].as_u64().unwrap_or(0) > 0
            && status["mirror_other"]["direction"] == "old-to-new"
            && status["cutover"]["primary"] == "new"
            && status["cutover"]["next"]["to"] == "done"
            && status["cutover"]["checks"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
            && status["cutover"]["checks"] == status["cutover"]["next"]["checks"],
        "the status shows new's dual writes onto old: {}",
        status["mirror"]
    );
    eventually(&pair.old, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    assert_same(&pair, &PGBENCH_TABLES)?;
    let history = on(&pair.old, "SELECT count(*) FROM pgbench_history")?;
    ensure!(
        history.parse::<i64>()? > 100,
        "the load ran: {history} transactions"
    );
    nothing_queued_on_either_side(&pair)?;
    // Back on old, everything still equal.
    let (status, report) = flip(&b, r#"{"to": "shadow"}"#).await?;
    ensure!(status == 200, "{report}");
    ensure!(port_of(&c).await? == old_port);
    c.batch_execute("UPDATE pgbench_branches SET bbalance = bbalance + 1")
        .await?;
    assert_same(&pair, &["pgbench_branches"])?;
    let old = pair_client(&pair.old).await?;
    ensure!(one(&old, "SELECT count(*) FROM pgbench_branches").await? == "1");
    Ok(())
}

/// An app's schema as it would be on both sides: a serial key, an identity key, an audit
/// trigger stamping its own time, a key-less tag table cascading from wallet.
const APP: &str = "
CREATE TABLE wallet (id serial PRIMARY KEY, owner text NOT NULL, balance int NOT NULL DEFAULT 0);
CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, wallet int, op text,
                    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION audit_wallet() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (wallet, op) VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
CREATE TRIGGER wallet_audit AFTER INSERT OR UPDATE ON wallet
  FOR EACH ROW EXECUTE FUNCTION audit_wallet();
CREATE TABLE tag (wallet int REFERENCES wallet ON DELETE CASCADE, tag text);";

const APP_TABLES: [&str; 3] = ["wallet", "audit", "tag"];

async fn write_some(c: &tokio_postgres::Client, owner: &str) -> Result<i32> {
    let id: i32 = c
        .query_one(
            "INSERT INTO wallet (owner) VALUES ($1) RETURNING id",
            &[&owner],
        )
        .await
        .map_err(|e| anyhow::anyhow!("inserting {owner}: {e:?}"))?
        .get(0);
    c.batch_execute(&format!(
        "UPDATE wallet SET balance = balance + 10 WHERE id = {id};
         INSERT INTO tag VALUES ({id}, '{owner}');"
    ))
    .await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_new_keeps_old_equal_and_goes_back_without_duplicate_keys() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(switchyard_tests::proxy::Pair::start).await??;
    for c in [&pair.old, &pair.new] {
        tokio::task::block_in_place(|| c.psql(switchyard_tests::proxy::DB, APP))?;
    }
    let (old_port, new_port) = (pair.old.port(), pair.new.port());
    let a = start_proxy(config(&pair, "a")).await?;
    let b = start_proxy(config(&pair, "b")).await?;
    let ca = connect_proxy(&a).await?;
    let cb = connect_proxy(&b).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(write_some(&ca, &format!("shadow{i}")).await?);
    }
    // Prepared on old before the flip, run on new after it.
    let add = cb
        .prepare("INSERT INTO wallet (owner) VALUES ($1) RETURNING id")
        .await?;

    // A transaction left open on one of new's tables (a session straight on new, or a
    // proxy transaction long enough to have streamed its changes there) keeps capture from
    // being installed on new: the flip is refused before anything waits, and writes go on
    // on old.
    let open = pair_client(&pair.new).await?;
    open.batch_execute("BEGIN; LOCK TABLE wallet IN ROW EXCLUSIVE MODE")
        .await?;
    // A flip while a transaction stays open.
    let (body, error) = (
        r#"{"to": "writes-new"}"#,
        "capture could not be installed on new",
    );
    refused_flip(&a, body, 409, error).await?;
    ensure!(phase_of(&a).await?.0 == "shadow");
    ids.push(write_some(&ca, "after-refusal").await?);
    ensure!(port_of(&ca).await? == old_port);
    open.batch_execute("COMMIT").await?;
    let open = connect_proxy(&b).await?;

    let (status, report) = flip(&a, r#"{"to": "writes-new"}"#).await?;
    ensure!(status == 200, "flip to writes-new: {status} {report}");
    ensure!(port_of(&ca).await? == new_port && port_of(&cb).await? == new_port);
    // New hands out ids past every one old handed out (serial and identity).
    let id: i32 = cb
        .query_one(&add, &[&"prepared-before"])
        .await
        .map_err(|e| anyhow::anyhow!("the statement prepared before the flip: {e:?}"))?
        .get(0);
    ensure!(
        id > *ids.iter().max().unwrap_or(&0),
        "new's sequence: {id} after {ids:?}"
    );
    ids.push(id);
    for i in 0..5 {
        ids.push(write_some(&ca, &format!("writes-new{i}")).await?);
    }
    ca.batch_execute("DELETE FROM wallet WHERE id = 2").await?;
    // A schema change mid-session on new reaches old, and the writes after it name the
    // new column on both.
    ca.batch_execute(
        "BEGIN; ALTER TABLE wallet ADD COLUMN note text; \
         UPDATE wallet SET note = 'after ddl' WHERE id = 1; COMMIT",
    )
    .await?;
    cb.batch_execute("UPDATE wallet SET note = 'from b' WHERE id = 3")
        .await?;
    // A cancel reaches the query on new.
    let cs = connect_proxy(&a).await?;
    let cancel_token = cs.cancel_token();
    let sleeper =
        tokio::spawn(async move { cs.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    wait_active(&pair.new, "SELECT pg_sleep(30)").await?;
    cancel_token.cancel_query(tokio_postgres::NoTls).await?;
    let cancelled = tokio::time::timeout(Duration::from_secs(10), sleeper).await??;
    ensure!(
        cancelled.as_ref().err().and_then(|e| e.code())
            == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "cancel on new: {cancelled:?}"
    );
    assert_same(&pair, &APP_TABLES)?;

    // Back to shadow: old takes writes again, and hands out ids past new's.
    let (status, report) = flip(&b, r#"{"to": "shadow"}"#).await?;
    ensure!(status == 200, "back to shadow: {status} {report}");
    ensure!(port_of(&ca).await? == old_port);
    let id = write_some(&cb, "back-on-old").await?;
    ensure!(
        id > *ids.iter().max().unwrap_or(&0),
        "old's sequence: {id} after {ids:?}"
    );
    ids.push(id);
    // A transaction left open holds the write pause past its deadline: the flip is
    // abandoned, and the load goes on on old.
    open.batch_execute("BEGIN; UPDATE wallet SET balance = 2 WHERE id = 1")
        .await?;
    let (status, report) = flip(&a, r#"{"to": "writes-new"}"#).await?;
    ensure!(
        status == 409,
        "a write flip while a transaction stays open: {status} {report}"
    );
    ensure!(
        report["waiting_for"]
            .as_array()
            .is_some_and(|w| w.iter().any(|i| i == "b")),
        "{report}"
    );
    ensure!(phase_of(&b).await?.0 == "shadow");
    ids.push(write_some(&ca, "after-abandon").await?);
    ensure!(port_of(&ca).await? == old_port);
    open.batch_execute("COMMIT").await?;
    // And forward again.
    let (status, report) = flip(&a, r#"{"to": "writes-new"}"#).await?;
    ensure!(status == 200, "forward again: {status} {report}");
    ids.push(write_some(&cb, "forward-again").await?);
    eventually(&pair.old, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    assert_same(&pair, &APP_TABLES)?;
    // Each trigger fired once, on the primary of its time; its rows reached the other side.
    ensure!(
        on(&pair.new, "SELECT count(*) FROM audit WHERE op = 'INSERT'")? == ids.len().to_string()
    );
    nothing_queued_on_either_side(&pair)
}

/// In writes-new old is the secondary: while it is down, the writes commit on new and their
/// keys wait in new's retry log; writes cannot go back to old until replay brought old
/// level (the pre-flight says so), and then old equals new row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_down_in_writes_new_queues_on_new_and_blocks_going_back_until_replayed() -> Result<()> {
    init_tracing();
    let pair = switchyard_tests::cutover::pair().await?;
    let p = start_proxy(config(&pair, "a")).await?;
    let c = connect_proxy(&p).await?;
    c.batch_execute("INSERT INTO t VALUES (1, 'before')")
        .await?;
    let (status, report) = flip(&p, r#"{"to": "writes-new"}"#).await?;
    ensure!(status == 200, "{status} {report}");
    // Old is the secondary now: the control table lives there too, so the instance keeps
    // writing only within its lease; the test stays well inside it.
    tokio::task::block_in_place(|| pair.old.stop_fast())?;
    c.batch_execute(
        "INSERT INTO t VALUES (2, 'while old was down'); UPDATE t SET v = 'changed' WHERE id = 1",
    )
    .await?;
    tokio::task::block_in_place(|| pair.old.start())?;
    let queued: i64 = on(&pair.new, "SELECT count(*) FROM _switchyard.retry_log")?.parse()?;
    ensure!(queued > 0, "the writes were queued on new");
    let (status, report) = flip(&p, r#"{"to": "shadow"}"#).await?;
    ensure!(
        status == 409,
        "going back with old behind: {status} {report}"
    );
    ensure!(
        switchyard_tests::cutover::failed_checks(&report)? == ["retry backlog empty"],
        "{report}"
    );
    let run = switchyard_tests::mirror::reconciler(&pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "replay: {}", run.text());
    ensure!(on(&pair.new, "SELECT count(*) FROM _switchyard.retry_log")? == "0");
    assert_same(&pair, &["t"])?;
    let (status, report) = flip(&p, r#"{"to": "shadow"}"#).await?;
    ensure!(
        status == 200,
        "back to shadow once replayed: {status} {report}"
    );
    c.batch_execute("INSERT INTO t VALUES (3, 'back on old')")
        .await?;
    ensure!(port_of(&c).await? == pair.old.port());
    assert_same(&pair, &["t"])?;
    Ok(())
}
