//! Reads the cutover sends to new as real drivers send them (psycopg 3, asyncpg), and the
//! canary protecting itself: a query shape old and new answer differently goes back to old.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::time::Duration;
use switchyard_tests::cutover::{admin, config, failed_checks, flip, one, pair, port_of};
use switchyard_tests::http::get;
use switchyard_tests::proxy::{connect_proxy, start_proxy, DB};
use switchyard_tests::wait::poll_until_async;

/// psycopg 3 (unnamed statements, then named ones past its prepare threshold) and asyncpg
/// (cached named statements, from their second run) read from new in reads-new, with the
/// right rows; their reads inside a transaction stay on old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_read_from_new() -> Result<()> {
    let pair = pair().await?;
    let a = start_proxy(config(&pair, "a")).await?;
    let c = connect_proxy(&a).await?;
    for i in 0..6 {
        c.simple_query(&format!("INSERT INTO t VALUES ({i}, 'row {i}')"))
            .await?;
    }
    let (status, report) = flip(&a, r#"{"to": "reads-new"}"#).await?;
    ensure!(status == 200, "{status} {report}");
    let python = switchyard_tests::clients::python_bin()?;
    let script = switchyard_tests::clients::python_script("cutover_reads.py");
    let url = switchyard_tests::proxy::proxy_url(&a, "postgres");
    let out = switchyard_tests::clients::run_client_ok(
        tokio::process::Command::new(python).arg(&script).arg(&url),
        "cutover_reads.py",
        Duration::from_secs(120),
    )
    .await?;
    let (old, new) = (pair.old.port().to_string(), pair.new.port().to_string());
    let metrics = get(admin(&a)?, "/metrics").await?.1;
    let routed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_reads_routed_total"))
        .collect();
    let mut lines = 0;
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() >= 3, "{line}");
        // asyncpg prepares a statement with Parse, Describe, Flush and runs it in the same
        // server batch (Bind, Execute, Sync): its first run goes to old with its Parse.
        let first_asyncpg = f[0] == "asyncpg" && f[1].ends_with("-0");
        let want = if f[1] == "in-transaction" || first_asyncpg {
            &old
        } else {
            &new
        };
        ensure!(
            f[2] == want,
            "{line}: answered by port {}, want {want}; {routed:?}",
            f[2]
        );
        if let Some(i) = f[1].strip_prefix("param-") {
            ensure!(line.ends_with(&format!("row {i}")), "{line}");
        }
        lines += 1;
    }
    ensure!(lines == 26, "{}", out.stdout);
    Ok(())
}

/// Scenario 35: in canary, a query shape that old and new answer differently (a row changed
/// on new behind everyone's back) goes back to old by itself once shadow comparisons
/// confirm it, through either protocol; other shapes keep reading from new, and the status
/// (and so the dashboard) names the shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_sends_a_mismatching_shape_back_to_old() -> Result<()> {
    let pair = pair().await?;
    let mut cfg = config(&pair, "a");
    cfg.shadow.sample_rate = 1.0;
    cfg.shadow.recheck_delay_ms = 200;
    let a = start_proxy(cfg).await?;
    let c = connect_proxy(&a).await?;
    c.simple_query("INSERT INTO t VALUES (1, 'same'), (2, 'same')")
        .await?;
    let (status, report) = flip(&a, r#"{"to": "canary", "percent": 100}"#).await?;
    ensure!(status == 200, "{status} {report}");
    tokio::task::block_in_place(|| {
        pair.new
            .psql(DB, "UPDATE t SET v = 'drifted' WHERE id IN (1, 2)")
    })?;
    let by_id = c
        .prepare("SELECT v FROM t WHERE id = $1 AND v <> ''")
        .await?;
    let seen_drift = Cell::new((false, false));
    let last = RefCell::new(String::new());
    poll_until_async("reads back on old", Duration::from_secs(30), || async {
        let simple = one(&c, "SELECT v FROM t WHERE id = 1").await?;
        let extended: String = c.query_one(&by_id, &[&2i64]).await?.get(0);
        let (s, e) = seen_drift.get();
        seen_drift.set((s | (simple == "drifted"), e | (extended == "drifted")));
        *last.borrow_mut() = format!("{simple} / {extended}");
        Ok((simple == "same" && extended == "same").then_some(()))
    })
    .await
    .with_context(|| format!("still reading new's drifted rows: {}", last.borrow()))?;
    let seen_drift = seen_drift.get();
    ensure!(
        seen_drift == (true, true),
        "the reads came from new first: {seen_drift:?}"
    );
    // Sent back for good, and named.
    for _ in 0..5 {
        ensure!(one(&c, "SELECT v FROM t WHERE id = 1").await? == "same");
    }
    ensure!(
        port_of(&c).await? == pair.new.port(),
        "other shapes still read from new"
    );
    let (_, text) = get(admin(&a)?, "/api/status").await?;
    let v: Value = serde_json::from_str(&text)?;
    let back = v["cutover"]["sent_back"].as_array().context("sent_back")?;
    ensure!(back.len() == 2, "two shapes sent back: {text}");
    ensure!(
        back.iter().all(|b| b["query"]
            .as_str()
            .unwrap_or("")
            .contains("FROM t WHERE id")),
        "{text}"
    );
    // Moving every read to new is refused while the mismatch is recent.
    let last = RefCell::new(Value::Null);
    let report = poll_until_async(
        "reads-new to be refused",
        Duration::from_secs(10),
        || async {
            let (status, report) = flip(&a, r#"{"to": "reads-new"}"#).await?;
            if status == 409 {
                return Ok(Some(report));
            }
            // The heartbeat carrying the mismatch may not have reached the table yet: back
            // to canary and try again.
            *last.borrow_mut() = report;
            flip(&a, r#"{"to": "canary", "percent": 100}"#).await?;
            Ok(None)
        },
    )
    .await
    .with_context(|| format!("reads-new was never refused: {}", last.borrow()))?;
    ensure!(
        failed_checks(&report)? == ["no recent mismatch"],
        "{report}"
    );
    tokio::task::block_in_place(|| pair.new.psql(DB, "UPDATE t SET v = 'same'"))?;
    // Repaired: the shapes may read from new again once the operator says so.
    let (status, answer) =
        switchyard_tests::http::request(admin(&a)?, "DELETE", "/api/cutover/sent-back", "").await?;
    ensure!(
        status == 200 && answer.contains("\"cleared\":2"),
        "{status} {answer}"
    );
    tokio::task::block_in_place(|| pair.new.psql(DB, "INSERT INTO t VALUES (3, 'only on new')"))?;
    ensure!(
        one(&c, "SELECT v FROM t WHERE id = 3").await? == "only on new",
        "the shape reads from new again"
    );
    Ok(())
}
