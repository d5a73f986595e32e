//! What the proxy reports about its comparisons (scenario 25 and the binary's flag): samples
//! hold keyed hashes, not values, unless configured; `--shadow-sample-rate` on the real binary
//! shows reads in `/api/status` and `/metrics` and logs a confirmed mismatch without values.

use super::*;
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::time::Duration;
use switchyard_proxy::RunningProxy;
use switchyard_tests::mirror::on;
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair, ProxyProcess, DB};
use switchyard_tests::shadow::{mismatches, shadow_config, wait_shadow};
use switchyard_tests::PgCluster;

const SECRETS: &str = "CREATE TABLE accounts (id int PRIMARY KEY, owner text, secret text);";

async fn confirmed_sample(pair: &Pair, redact: bool) -> Result<String> {
    let mut cfg = shadow_config(pair);
    cfg.shadow.redact = redact;
    let proxy: RunningProxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    c.simple_query("SELECT secret FROM accounts WHERE owner = 'literal-owner-name'")
        .await?;
    wait_shadow(&proxy, "a confirmed mismatch", |s| totals(s).2 == 1).await?;
    let (_, body) = mismatches(&proxy).await?;
    proxy.shutdown().await;
    Ok(body)
}

/// Scenario 25: samples hold keyed hashes, not values, and the query without its
/// constants; with `redact = false` the values are shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_hold_no_raw_values_unless_configured() -> Result<()> {
    let pair = pair(SECRETS, SECRETS).await?;
    on(
        &pair.old,
        "INSERT INTO accounts VALUES (1, 'literal-owner-name', 'hunter2-old-value')",
    )?;
    on(
        &pair.new,
        "INSERT INTO accounts VALUES (1, 'literal-owner-name', 'hunter2-new-value')",
    )?;
    let redacted = confirmed_sample(&pair, true).await?;
    ensure!(!redacted.contains("hunter2"), "{redacted}");
    ensure!(!redacted.contains("literal-owner-name"), "{redacted}");
    ensure!(redacted.contains("hmac:"), "{redacted}");
    ensure!(redacted.contains("\"redacted\":true"), "{redacted}");

    let plain = confirmed_sample(&pair, false).await?;
    ensure!(plain.contains("hunter2-old-value"), "{plain}");
    ensure!(plain.contains("hunter2-new-value"), "{plain}");
    ensure!(
        !plain.contains("literal-owner-name"),
        "the query is normalized either way: {plain}"
    );
    Ok(())
}

/// The real binary with `--shadow-sample-rate`: reads are compared and show in
/// `/api/status` and `/metrics`; a confirmed mismatch logs one structured line without
/// values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_sample_rate_flag_turns_shadow_reads_on() -> Result<()> {
    let pair = pair(COUNTERS, COUNTERS).await?;
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let p = tokio::task::block_in_place(|| {
        ProxyProcess::spawn(
            &[
                "--old",
                &old,
                "--new",
                &new,
                "--mirror-mode",
                "off",
                "--shadow-sample-rate",
                "1",
            ],
            &[],
        )
    })?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(p.port)
        .user(PgCluster::USER)
        .dbname(DB);
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.query("SELECT id, v FROM counters", &[]).await?;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", p.admin_port).parse()?;
    one_total(admin, "matched")
        .await
        .with_context(|| p.log_text())?;

    on(&pair.new, "UPDATE counters SET v = 424242 WHERE id = 2")?;
    c.query("SELECT id, v FROM counters", &[]).await?;
    one_total(admin, "confirmed")
        .await
        .with_context(|| p.log_text())?;
    let (_, metrics) = switchyard_tests::http::get(admin, "/metrics").await?;
    ensure!(
        metrics.contains("switchyard_shadow_comparisons_total{")
            && metrics.contains("outcome=\"confirmed\""),
        "{metrics}"
    );
    let log = switchyard_tests::wait::poll_until_async(
        "the mismatch log line",
        Duration::from_secs(10),
        || {
            let text = p.log_text();
            async move {
                Ok(text
                    .lines()
                    .find(|l| l.contains("Shadow read mismatch confirmed"))
                    .map(str::to_string))
            }
        },
    )
    .await?;
    ensure!(
        log.contains("fingerprint=") && log.contains("difference=\"rows\""),
        "{log}"
    );
    ensure!(!log.contains("424242"), "no values in the log: {log}");
    Ok(())
}

/// Waits (up to 30 s) for `/api/status` on `admin` to count one comparison as `total`.
async fn one_total(admin: std::net::SocketAddr, total: &str) -> Result<()> {
    switchyard_tests::wait::poll_until_async(
        &format!("one comparison {total} in /api/status"),
        Duration::from_secs(30),
        || async move {
            let (_, body) = switchyard_tests::http::get(admin, "/api/status").await?;
            let s: Value = serde_json::from_str(&body)?;
            Ok((s["shadow"]["totals"][total].as_u64() == Some(1)).then_some(()))
        },
    )
    .await
}
