//! A session the write flip moves to the other database keeps what it set up on its server
//! process: every session `SET` (sent as a simple Query or through Parse/Bind/Execute), its
//! `LISTEN` channels (a NOTIFY sent after the move reaches it), its SQL-level `PREPARE`d
//! statements; and `/api/status` carries the next phase's checklist.

use anyhow::{anyhow, ensure, Result};
use futures_util::StreamExt;
use std::time::Duration;
use switchyard_tests::cutover::{admin, config, flip, port_of};
use switchyard_tests::http::get;
use switchyard_tests::mirror::init_tracing;
use switchyard_tests::proxy::{connect_proxy, proxy_config, start_proxy};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// A client whose notifications come out of a channel.
async fn listening_client(
    proxy: &switchyard_proxy::RunningProxy,
) -> Result<(
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<(String, String)>,
)> {
    let (client, mut conn) = proxy_config(proxy, switchyard_tests::pg::PgCluster::USER, None)
        .connect(tokio_postgres::NoTls)
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    Ok((client, rx))
}

async fn setting(c: &tokio_postgres::Client, name: &str) -> Result<String> {
    Ok(c.query_one(&format!("SHOW {name}"), &[]).await?.get(0))
}

async fn notified(
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    channel: &str,
    payload: &str,
) -> Result<()> {
    let want = (channel.to_string(), payload.to_string());
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(n) = rx.recv().await {
            if n == want {
                return Ok(());
            }
        }
        Err(anyhow!("the notification stream ended"))
    })
    .await
    .map_err(|_| anyhow!("no notification {want:?} within 10 s"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_sessions_keep_settings_listens_and_prepared_statements() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(switchyard_tests::proxy::Pair::start).await??;
    let (old_port, new_port) = (pair.old.port(), pair.new.port());
    let a = start_proxy(config(&pair, "a")).await?;
    let (listener, mut rx) = listening_client(&a).await?;
    listener
        .batch_execute(
            "SET statement_timeout = '7s'; SET application_name = 'moved-app'; \
             LISTEN jobs; PREPARE twice(int) AS SELECT $1 * 2",
        )
        .await?;
    // Through the extended protocol, as psycopg sends every statement.
    listener.execute("SET lock_timeout = '3s'", &[]).await?;
    listener
        .execute("SET idle_in_transaction_session_timeout = '9s'", &[])
        .await?;
    listener
        .batch_execute("RESET idle_in_transaction_session_timeout")
        .await?;
    let notifier = connect_proxy(&a).await?;
    notifier.batch_execute("NOTIFY jobs, 'on old'").await?;
    notified(&mut rx, "jobs", "on old").await?;

    let status: serde_json::Value = serde_json::from_str(&get(admin(&a)?, "/api/status").await?.1)?;
    let checks = status["cutover"]["checks"]
        .as_array()
        .ok_or_else(|| anyhow!("no checks in {}", status["cutover"]))?;
    ensure!(
        status["cutover"]["next"]["to"] == "reads-new"
            && checks
                .iter()
                .any(|c| c["name"].is_string() && c["ok"].is_boolean()),
        "{}",
        status["cutover"]
    );

    for (to, port) in [("writes-new", new_port), ("shadow", old_port)] {
        let (code, report) = flip(&a, &format!(r#"{{"to": "{to}"}}"#)).await?;
        ensure!(code == 200, "flip to {to}: {code} {report}");
        ensure!(
            port_of(&listener).await? == port,
            "the listener moved to {to}'s primary"
        );
        ensure!(setting(&listener, "statement_timeout").await? == "7s");
        ensure!(setting(&listener, "application_name").await? == "moved-app");
        ensure!(setting(&listener, "lock_timeout").await? == "3s");
        ensure!(setting(&listener, "idle_in_transaction_session_timeout").await? == "0");
        let row = listener.query_one("EXECUTE twice(21)", &[]).await;
        let doubled: i32 = row
            .map_err(|e| anyhow!("the SQL-level prepared statement after the move: {e:?}"))?
            .get(0);
        ensure!(doubled == 42);
        // The notifier moved too; its NOTIFY runs where the listener now listens.
        ensure!(port_of(&notifier).await? == port);
        notifier
            .batch_execute(&format!("NOTIFY jobs, 'after {to}'"))
            .await?;
        notified(&mut rx, "jobs", &format!("after {to}")).await?;
    }
    // What the session dropped stays dropped after a move.
    listener
        .batch_execute("UNLISTEN jobs; DEALLOCATE twice")
        .await?;
    let (code, report) = flip(&a, r#"{"to": "writes-new"}"#).await?;
    ensure!(code == 200, "{code} {report}");
    ensure!(port_of(&listener).await? == new_port);
    let gone = listener.query_one("EXECUTE twice(1)", &[]).await;
    ensure!(
        gone.as_ref().err().and_then(|e| e.code())
            == Some(&tokio_postgres::error::SqlState::UNDEFINED_PSTATEMENT),
        "a deallocated statement is not prepared again: {gone:?}"
    );
    notifier.batch_execute("NOTIFY jobs, 'unheard'").await?;
    listener.batch_execute("LISTEN probe").await?;
    notifier.batch_execute("NOTIFY probe, 'heard'").await?;
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or_else(|| anyhow!("the notification stream ended"))?;
    ensure!(
        first == ("probe".to_string(), "heard".to_string()),
        "after UNLISTEN the session hears only what it listens to: {first:?}"
    );
    Ok(())
}
