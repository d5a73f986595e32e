//! Cancel requests and statement_timeout through the proxy.

use super::*;
use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use std::time::{Duration, Instant};
use switchyard_proxy::protocol::startup::StartupRequest;
use switchyard_proxy::RunningProxy;
use switchyard_tests::proxy::{connect_proxy, DB};
use switchyard_tests::wait::poll_until_async;
use switchyard_tests::wire::{first_error, Wire};
use switchyard_tests::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Waits until a backend on the old cluster is running `query` (exact text).
async fn wait_active(direct: &tokio_postgres::Client, query: &str) -> Result<i32> {
    poll_until_async(&format!("`{query}` to run on the old cluster"), Duration::from_secs(20), || async {
        let rows = direct
            .query(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active' AND wait_event = 'PgSleep'",
                &[&query],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i32>(0)))
    })
    .await
}

/// Sends a cancel for `client`'s running query and waits (up to 15 s) for `query`, the task
/// running it, to end; what the query returned.
async fn cancel_and_wait(
    client: &tokio_postgres::Client,
    query: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    who: &str,
) -> Result<Result<(), tokio_postgres::Error>> {
    client
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .with_context(|| format!("sending the cancel for {who}"))?;
    Ok(tokio::time::timeout(Duration::from_secs(15), query)
        .await
        .with_context(|| format!("{who}'s query did not end within 15 s of the cancel"))??)
}

fn expect_sqlstate(
    result: Result<impl std::fmt::Debug, tokio_postgres::Error>,
    state: &SqlState,
    what: &str,
) -> Result<String> {
    match result {
        Ok(v) => bail!(
            "{what}: succeeded ({v:?}) instead of failing with {}",
            state.code()
        ),
        Err(e) => {
            let db = e
                .as_db_error()
                .with_context(|| format!("{what}: not a server error: {e:?}"))?;
            ensure!(
                db.code() == state,
                "{what}: SQLSTATE {} ({}) instead of {}",
                db.code().code(),
                db.message(),
                state.code()
            );
            Ok(db.message().to_string())
        }
    }
}

/// Sends a CancelRequest for an idle session the way libpq does (wait for the proxy to close
/// the cancel connection, which it does once the server has taken the request), then checks
/// that the session's next statement is not cancelled.
async fn idle_cancel_is_dropped(proxy: &RunningProxy) -> Result<()> {
    let mut w = Wire::connect(proxy.listen_addr()).await?;
    w.send_startup(3, 0, &[("user", PgCluster::USER), ("database", DB)])
        .await?;
    let frames = w.read_until_ready().await?;
    let key_data = frames
        .iter()
        .find(|f| f.tag() == b'K')
        .context("no BackendKeyData from the proxy")?
        .body();
    ensure!(key_data.len() >= 8, "short BackendKeyData: {key_data:?}");
    let pid = i32::from_be_bytes([key_data[0], key_data[1], key_data[2], key_data[3]]);
    let mut packet = BytesMut::new();
    StartupRequest::Cancel {
        pid,
        key: key_data.slice(4..),
    }
    .encode(&mut packet);
    let mut cancel = TcpStream::connect(proxy.listen_addr()).await?;
    cancel.write_all(&packet).await?;
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), cancel.read_to_end(&mut sink))
        .await
        .context("the proxy did not close the cancel connection within 10 s")??;
    ensure!(
        sink.is_empty(),
        "the proxy answered a cancel request with {sink:?}"
    );
    let frames = w.query("SELECT pg_sleep(0.3)").await?;
    if let Some(e) = first_error(&frames) {
        bail!("a statement after an idle-time cancel failed: {e:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_statement_timeout_through_proxy() -> Result<()> {
    let s = setup().await?;
    let direct = s.pair.old.connect(DB).await?;
    let a = std::sync::Arc::new(connect_proxy(&s.proxy).await?);
    let b = std::sync::Arc::new(connect_proxy(&s.proxy).await?);

    // Two sessions sleep; cancelling A must stop A's query only.
    let qa = "SELECT pg_sleep(30) /* a */";
    let qb = "SELECT pg_sleep(30) /* b */";
    let started = Instant::now();
    let ta = tokio::spawn({
        let a = a.clone();
        async move { a.simple_query(qa).await.map(|_| ()) }
    });
    let tb = tokio::spawn({
        let b = b.clone();
        async move { b.simple_query(qb).await.map(|_| ()) }
    });
    let pid_a = wait_active(&direct, qa).await?;
    let pid_b = wait_active(&direct, qb).await?;
    assert_ne!(pid_a, pid_b);

    let ra = cancel_and_wait(&a, ta, "A").await?;
    let msg = expect_sqlstate(ra, &SqlState::QUERY_CANCELED, "cancelled pg_sleep(30)")?;
    assert_eq!(msg, "canceling statement due to user request");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        started.elapsed()
    );
    // B still sleeps on its backend.
    assert!(!tb.is_finished(), "B's query ended when A was cancelled");
    let still: i64 = direct
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query = $2 AND state = 'active'", &[&pid_b, &qb])
        .await?
        .get(0);
    assert_eq!(still, 1, "B's backend stopped running its query");
    let rb = cancel_and_wait(&b, tb, "B").await?;
    expect_sqlstate(rb, &SqlState::QUERY_CANCELED, "cancelled pg_sleep(30) on B")?;

    // Both sessions go on working, on the same backends.
    for (client, pid) in [(&a, pid_a), (&b, pid_b)] {
        let row = client
            .query_one("SELECT pg_backend_pid(), 1 + 1", &[])
            .await?;
        assert_eq!(row.get::<_, i32>(0), pid);
        assert_eq!(row.get::<_, i32>(1), 2);
    }

    // A cancel while the session is idle is dropped, as by PostgreSQL. (tokio-postgres's
    // cancel_query returns without waiting for the cancel to be processed, so it cannot be used
    // to check this: a late cancel would hit a later statement. libpq waits for the EOF.)
    idle_cancel_is_dropped(&s.proxy).await?;

    // statement_timeout through the proxy, as on the server directly.
    a.batch_execute("SET statement_timeout = '200ms'").await?;
    let started = Instant::now();
    let via_proxy = expect_sqlstate(
        a.query("SELECT pg_sleep(5)", &[]).await,
        &SqlState::QUERY_CANCELED,
        "statement_timeout through the proxy",
    )?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "statement_timeout took {took:?}"
    );
    direct
        .batch_execute("SET statement_timeout = '200ms'")
        .await?;
    let directly = expect_sqlstate(
        direct.query("SELECT pg_sleep(5)", &[]).await,
        &SqlState::QUERY_CANCELED,
        "statement_timeout directly",
    )?;
    assert_eq!(via_proxy, directly);
    assert_eq!(via_proxy, "canceling statement due to statement timeout");
    // Simple protocol too, inside a transaction: the transaction is aborted, then rolled back.
    a.batch_execute("BEGIN").await?;
    expect_sqlstate(
        a.simple_query("SELECT pg_sleep(5)").await,
        &SqlState::QUERY_CANCELED,
        "statement_timeout in a transaction",
    )?;
    expect_sqlstate(
        a.simple_query("SELECT 1").await,
        &SqlState::IN_FAILED_SQL_TRANSACTION,
        "statement in the aborted transaction",
    )?;
    a.batch_execute("ROLLBACK; RESET statement_timeout").await?;
    let row = a
        .query_one(
            "SELECT current_setting('statement_timeout'), pg_backend_pid()",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "0");
    assert_eq!(row.get::<_, i32>(1), pid_a);
    s.proxy.shutdown().await;
    Ok(())
}
