//! The cutover's write phase on real clusters with two proxy instances: writes move to new
//! (new captured, old kept equal as the secondary in the same lockstep) and back, under
//! pgbench in all three protocol modes, with no client error and both databases equal row by
//! row without replay; a write flip held back by a transaction left open is abandoned and
//! the load goes on where it was.

use anyhow::{ensure, Result};
use std::time::Duration;
use switchyard_proxy::RunningProxy;
use switchyard_tests::cutover::{admin, config, flip, one, pair_client, phase_of, port_of};
use switchyard_tests::http::get;
use switchyard_tests::mirror::{assert_same, eventually, init_tracing, on};
use switchyard_tests::proxy::{connect_proxy, start_proxy};

const PGBENCH_TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

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

fn no_failures(what: &str, out: &std::process::Output) -> Result<()> {
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("number of failed transactions: 0 "),
        "pgbench -M {what}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        no_failures(what, &run.await??)?;
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
    eventually(&pair.old, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    eventually(&pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    assert_same(&pair, &PGBENCH_TABLES)?;
    let history = on(&pair.old, "SELECT count(*) FROM pgbench_history")?;
    ensure!(
        history.parse::<i64>()? > 100,
        "the load ran: {history} transactions"
    );
    // Nothing went to a retry log, on either side.
    for c in [&pair.old, &pair.new] {
        ensure!(on(c, "SELECT count(*) FROM _switchyard.retry_log")? == "0");
    }
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
