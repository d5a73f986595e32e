//! LISTEN/NOTIFY through the proxy.

use super::*;
use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_proxy::RunningProxy;
use switchyard_tests::proxy::{connect_proxy, proxy_config, DB};
use switchyard_tests::PgCluster;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls, Notification};

/// Connects through the proxy and forwards every notification of the session to a channel.
async fn listening_client(
    proxy: &RunningProxy,
) -> Result<(
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<Notification>,
)> {
    let (client, mut conn) = proxy_config(proxy, PgCluster::USER, None)
        .connect(NoTls)
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "listening connection failed");
                    break;
                }
            }
        }
    });
    Ok((client, rx))
}

async fn next_notification(
    rx: &mut mpsc::UnboundedReceiver<Notification>,
) -> Result<(String, String, i32)> {
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .context("no notification within 10 s")?
        .context("the listening connection ended")?;
    Ok((
        n.channel().to_string(),
        n.payload().to_string(),
        n.process_id(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_through_proxy() -> Result<()> {
    let s = setup().await?;
    let (listener, mut rx) = listening_client(&s.proxy).await?;
    listener
        .batch_execute("LISTEN orders; LISTEN other")
        .await?;
    let notifier = connect_proxy(&s.proxy).await?;
    let notifier_pid: i32 = notifier
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);

    notifier.batch_execute("NOTIFY orders, 'order 1'").await?;
    // In a transaction: delivered once, at commit; a rolled-back one never.
    notifier
        .batch_execute(
            "BEGIN; SELECT pg_notify('orders', 'order 2'); SELECT pg_notify('other', 'x'); COMMIT",
        )
        .await?;
    notifier
        .batch_execute("BEGIN; NOTIFY orders, 'rolled back'; ROLLBACK")
        .await?;
    // Extended protocol.
    notifier
        .execute("SELECT pg_notify($1, $2)", &[&"orders", &"order 3"])
        .await?;
    // A notifier talking to the old cluster directly reaches the proxied listener as well.
    let direct = s.pair.old.connect(DB).await?;
    let direct_pid: i32 = direct
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    direct.batch_execute("NOTIFY orders, 'direct'").await?;
    notifier.batch_execute("NOTIFY orders, 'sentinel'").await?;

    let mut got = Vec::new();
    loop {
        let n = next_notification(&mut rx).await?;
        let done = n.1 == "sentinel";
        got.push(n);
        if done {
            break;
        }
    }
    let p = notifier_pid;
    assert_eq!(
        got,
        vec![
            ("orders".to_string(), "order 1".to_string(), p),
            ("orders".to_string(), "order 2".to_string(), p),
            ("other".to_string(), "x".to_string(), p),
            ("orders".to_string(), "order 3".to_string(), p),
            ("orders".to_string(), "direct".to_string(), direct_pid),
            ("orders".to_string(), "sentinel".to_string(), p),
        ]
    );
    // A round trip on the listener: nothing more is queued, no duplicates.
    listener.simple_query("SELECT 1").await?;
    assert!(rx.try_recv().is_err(), "an extra notification arrived");

    // After UNLISTEN nothing arrives; the session stays usable and a new LISTEN works.
    listener.batch_execute("UNLISTEN orders").await?;
    notifier
        .batch_execute("NOTIFY orders, 'after unlisten'; NOTIFY other, 'still listening'")
        .await?;
    assert_eq!(
        next_notification(&mut rx).await?,
        ("other".to_string(), "still listening".to_string(), p)
    );
    listener.simple_query("SELECT 1").await?;
    assert!(
        rx.try_recv().is_err(),
        "a notification after UNLISTEN arrived"
    );
    s.proxy.shutdown().await;
    Ok(())
}
