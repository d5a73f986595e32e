//! What the old database shows of a session behind the proxy while its client waits: the
//! proxy's own statements in a write transaction (the claim, the drain of captured changes)
//! must leave the server idle in the transaction, as the client left it, so
//! `pg_stat_activity`, `idle_in_transaction_session_timeout` and lock monitoring see what
//! they would without the proxy.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_tests::mirror::{assert_same, on, proxied, Proxied};
use switchyard_tests::proxy::{connect_proxy, proxy_config, Pair};
use switchyard_tests::wait::poll_until_async;
use switchyard_tests::PgCluster;

async fn state_of(pair: &Pair, pid: i32) -> Result<String> {
    on(
        &pair.old,
        &format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"),
    )
}

/// A write in an open transaction, through the simple and the extended protocol: the
/// backend is `idle in transaction`, not `active` waiting for a Sync the proxy never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_transaction_waiting_for_its_client_is_idle_in_transaction() -> Result<()> {
    let Proxied { proxy, pair } = proxied("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let client = connect_proxy(&proxy).await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);

    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await?;
    let state = state_of(&pair, pid).await?;
    ensure!(
        state == "idle in transaction",
        "after a simple-protocol write the old database shows {state:?}"
    );
    client
        .execute("INSERT INTO t VALUES ($1)", &[&2i32])
        .await?;
    let state = state_of(&pair, pid).await?;
    ensure!(
        state == "idle in transaction",
        "after an extended-protocol write the old database shows {state:?}"
    );
    client.batch_execute("COMMIT").await?;
    let state = state_of(&pair, pid).await?;
    ensure!(
        state == "idle",
        "after COMMIT the old database shows {state:?}"
    );
    assert_same(&pair, &["t"])
}

/// `idle_in_transaction_session_timeout` ends a write transaction its client abandoned: on
/// old, and so on new, where nothing of it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_in_transaction_timeout_ends_an_abandoned_write() -> Result<()> {
    let Proxied { proxy, pair } = proxied("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let (client, conn) = proxy_config(&proxy, PgCluster::USER, None)
        .connect(tokio_postgres::NoTls)
        .await?;
    // The server's FATAL arrives while the client waits: the connection task gets it.
    let conn = tokio::spawn(conn);
    client
        .batch_execute(
            "SET idle_in_transaction_session_timeout = '300ms'; \
             BEGIN; INSERT INTO t VALUES (1)",
        )
        .await?;
    let pid = on(
        &pair.old,
        // The proxy's own background sessions (the change-log drain) open short
        // transactions too.
        "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' \
         AND application_name NOT LIKE 'switchyard%'",
    )?;
    ensure!(!pid.is_empty(), "no transaction left open on old");

    poll_until_async(
        "the server to end the idle transaction",
        Duration::from_secs(20),
        || async {
            let left = on(
                &pair.old,
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
            )?;
            Ok((left == "0").then_some(()))
        },
    )
    .await?;
    let err = conn
        .await?
        .err()
        .context("the connection ended without the server's error")?;
    ensure!(
        err.as_db_error().map(|e| e.code().code()) == Some("25P03"),
        "the client was not told why: {err:?}"
    );
    let other = connect_proxy(&proxy).await?;
    other.batch_execute("INSERT INTO t VALUES (2)").await?;
    let n = on(&pair.new, "SELECT count(*) FROM t WHERE id = 1").context("new")?;
    ensure!(n == "0", "the abandoned write reached new");
    assert_same(&pair, &["t"])
}
