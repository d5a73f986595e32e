//! The secondary failing under dual writes (scenario 6 and after): failures on new alone are
//! queued in the retry log, new down and back, a new that cannot prepare transactions refused
//! at start, and DDL rolled back on new with a failing transaction replayed from its record.

use super::*;
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_tests::mirror::{eventually, init_tracing, on, proxied, rows, same_rows, Proxied};
use switchyard_tests::proxy::{batch_each, connect_proxy, start_proxy, DB};
use switchyard_tests::wait::poll_until_async;
use switchyard_tests::PgCluster;

/// `t (id, v)` behind a proxy, where a check on new alone refuses a `v` of five characters
/// or more: writes that fail on the secondary only.
async fn proxied_t_refusing_long_values_on_new() -> Result<Proxied> {
    let s = proxied("CREATE TABLE t (id int PRIMARY KEY, v text);").await?;
    on(
        &s.pair.new,
        "ALTER TABLE t ADD CONSTRAINT short CHECK (length(v) < 5)",
    )?;
    Ok(s)
}

/// Scenario 6: a statement that fails only on the secondary: the client sees the primary's
/// result, the keys are queued in the retry log, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_only_failures_are_queued() -> Result<()> {
    let s = proxied_t_refusing_long_values_on_new().await?;
    on(&s.pair.old, "CREATE TABLE only_old (id int PRIMARY KEY)")?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO t VALUES (1, 'ok')").await?;
    c.batch_execute("INSERT INTO t VALUES (2, 'too long for new')")
        .await?;
    c.batch_execute("INSERT INTO only_old VALUES (7)").await?;
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (3, 'ok'); INSERT INTO t VALUES (4, 'far too long'); COMMIT",
    )
    .await?;
    c.batch_execute("INSERT INTO t VALUES (5, 'ok')").await?;
    let old = rows(&s.pair.old, "t")?;
    ensure!(
        old.lines().count() == 5,
        "every write committed on old:\n{old}"
    );
    // New holds what it could take.
    eventually(
        &s.pair.new,
        "SELECT t::text FROM t t ORDER BY 1",
        "(1,ok)\n(5,ok)",
    )?;
    let queued = on(
        &s.pair.old,
        "SELECT string_agg(table_name || ' ' || key::text, '; ' ORDER BY table_name, key::text) FROM _switchyard.retry_log WHERE kind = 'row'",
    )?;
    ensure!(
        queued == "\"public\".\"only_old\" {\"id\": 7}; \"public\".\"t\" {\"id\": 2}; \"public\".\"t\" {\"id\": 3}; \"public\".\"t\" {\"id\": 4}",
        "queued: {queued}"
    );
    eventually(&s.pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    Ok(())
}

/// The secondary is down: writes keep committing on the primary with their keys queued,
/// and once it is back the lockstep resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_queues_and_recovers() -> Result<()> {
    let s = proxied("CREATE TABLE t (id int PRIMARY KEY, v text);").await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO t VALUES (1, 'before')")
        .await?;
    tokio::task::block_in_place(|| s.pair.new.stop_immediate())?;
    for i in 2..=6 {
        c.execute("INSERT INTO t VALUES ($1, 'while down')", &[&i])
            .await?;
    }
    ensure!(retry_records(&s.pair)? == 5, "five queued keys");
    let admin = s.proxy.admin_addr().context("admin")?;
    poll_until_async(
        "the status page to show the backlog",
        Duration::from_secs(20),
        || async {
            let (_, body) = switchyard_tests::http::get(admin, "/api/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            Ok(
                (v["mirror"]["retry_backlog"] == 5 && v["mirror"]["rows_queued"] == 5)
                    .then_some(()),
            )
        },
    )
    .await?;
    tokio::task::block_in_place(|| s.pair.new.start())?;
    poll_until_async(
        "the proxy to reach new again",
        Duration::from_secs(20),
        || async {
            c.execute(
                "INSERT INTO t VALUES (100, 'after') ON CONFLICT (id) DO UPDATE SET v = 'after'",
                &[],
            )
            .await?;
            Ok((on(&s.pair.new, "SELECT count(*) FROM t WHERE id = 100")? == "1").then_some(()))
        },
    )
    .await?;
    eventually(
        &s.pair.new,
        "SELECT t::text FROM t t ORDER BY 1",
        "(1,before)\n(100,after)",
    )?;
    Ok(())
}

/// A new database that cannot prepare transactions: the proxy refuses to start and says
/// what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_secondary_without_prepared_transactions() -> Result<()> {
    init_tracing();
    let old = PgCluster::builder().start()?;
    let new = PgCluster::builder().max_prepared_transactions(0).start()?;
    old.create_database(DB)?;
    new.create_database(DB)?;
    let mut cfg = switchyard_proxy::ProxyConfig::new(old.url(DB), new.url(DB));
    cfg.listen = "127.0.0.1:0".into();
    cfg.admin_listen = String::new();
    let err = match start_proxy(cfg.clone()).await {
        Ok(_) => {
            anyhow::bail!("the proxy started against a secondary without max_prepared_transactions")
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("max_prepared_transactions = 0"), "{err}");
    cfg.mirror.mode = switchyard_proxy::config::MirrorMode::Off;
    start_proxy(cfg)
        .await
        .context("passthrough needs no prepared transactions")?;
    Ok(())
}

/// DDL applied on the secondary early in a transaction whose later change fails there is
/// rolled back with it; its statement record replays it, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_before_a_secondary_failure_are_recorded() -> Result<()> {
    let s = proxied_t_refusing_long_values_on_new().await?;
    let c = connect_proxy(&s.proxy).await?;
    batch_each(
        &c,
        &[
            "BEGIN",
            "CREATE TABLE made_here (id int PRIMARY KEY)",
            "INSERT INTO made_here VALUES (1)",
            "INSERT INTO t VALUES (1, 'far too long')",
            "COMMIT",
        ],
    )
    .await?;
    ensure!(
        on(
            &s.pair.new,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'made_here'"
        )? == "0",
        "the secondary transaction was rolled back"
    );
    let kinds = on(
        &s.pair.old,
        "SELECT string_agg(kind, ',' ORDER BY id) FROM _switchyard.retry_log",
    )?;
    ensure!(
        kinds.contains("statement") && kinds.contains("row"),
        "records: {kinds}"
    );
    // The new side's constraint is the operator's to fix; then replay converges.
    on(&s.pair.new, "ALTER TABLE t DROP CONSTRAINT short")?;
    switchyard_tests::reconciler::run_reconciler(
        &[
            "replay",
            "--old",
            &s.pair.old.url(DB),
            "--new",
            &s.pair.new.url(DB),
        ],
        Duration::from_secs(60),
    )
    .await?
    .exits(0)?;
    same_rows(&s.pair, "made_here")?;
    same_rows(&s.pair, "t")?;
    Ok(())
}
