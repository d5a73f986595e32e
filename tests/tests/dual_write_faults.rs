//! Dual writes under faults, ending with the reconciler's verify comparing both databases
//! (scenarios 7, 9, 11, 14): the proxy killed between the secondary PREPARE and the primary
//! COMMIT and between that COMMIT and COMMIT PREPARED, the secondary down under load then
//! replayed, and pgbench in all query modes through the mirroring proxy.

use anyhow::{ensure, Result};
use std::time::Duration;
use switchyard_proxy::RunningProxy;
use switchyard_tests::clients::{pgbench_bin, run_client_ok};
use switchyard_tests::mirror::{
    assert_nothing_queued, assert_pgbench_level, assert_verified, crash_between_commits, on,
    pair_with, pgbench_across_secondary_restart, pgbench_pair, reconciler, retry_records,
    PGBENCH_KEYED,
};
use switchyard_tests::proxy::{proxy_url, start_proxy, Pair, DB};
use switchyard_tests::wait::poll_until;
use switchyard_tests::PgCluster;

async fn crash_at(pair: &Pair, failpoint: &str, id: i32) -> Result<()> {
    switchyard_tests::mirror::crash_at(pair, &[], failpoint, id).await
}

/// pgbench's tables on both sides and a proxy in front: the pair, the proxy, its URL.
async fn pgbench_behind_proxy() -> Result<(Pair, RunningProxy, String)> {
    let pair = pgbench_pair().await?;
    let proxy = start_proxy(pair.config()).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    Ok((pair, proxy, url))
}

/// Scenario 9, first half: killed after PREPARE, before the primary COMMIT. The primary
/// rolled back (its connection died), so recovery rolls the prepared transaction back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_prepare_and_commit_is_rolled_back() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    crash_at(&pair, "after-prepare", 1).await?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM pg_prepared_xacts")? == "1",
        "one in-doubt transaction"
    );
    ensure!(on(&pair.old, "SELECT count(*) FROM t")? == "0");
    let run = reconciler(&pair, "recover", &["--min-age-secs", "0"])
        .await?
        .exits(0)?;
    ensure!(run.stdout.contains("rolled back 1"), "{}", run.text());
    ensure!(on(&pair.new, "SELECT count(*) FROM pg_prepared_xacts")? == "0");
    ensure!(on(&pair.new, "SELECT count(*) FROM t")? == "0");
    assert_verified(&pair, "t").await
}

/// Scenario 9, second half: killed after the primary COMMIT, before COMMIT PREPARED.
/// Recovery commits the prepared transaction; the proxy's own recovery loop does the same
/// when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_commit_prepared_is_committed() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    crash_between_commits(&pair, &[]).await?;
    let run = reconciler(&pair, "recover", &["--min-age-secs", "0"]).await?;
    ensure!(run.stdout.contains("committed 1"), "{}", run.text());
    assert_verified(&pair, "t").await?;

    // Again, and this time the restarted proxy resolves it by itself.
    crash_at(&pair, "after-primary-commit", 2).await?;
    let proxy = start_proxy(pair.config()).await?;
    tokio::task::block_in_place(|| {
        poll_until(
            "the proxy to resolve the in-doubt commit",
            Duration::from_secs(30),
            || Ok((pair.new.psql(DB, "SELECT count(*) FROM t")? == "2").then_some(())),
        )
    })?;
    drop(proxy);
    assert_verified(&pair, "t").await?;
    Ok(())
}

/// Scenarios 7 and 11: the secondary stopped (immediate) under pgbench load and restarted;
/// no client error, the retry log replays (twice: duplicates are harmless), verify equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_killed_under_pgbench_then_replayed() -> Result<()> {
    let (pair, proxy, url) = pgbench_behind_proxy().await?;
    pgbench_across_secondary_restart(&pair, &url).await?;
    drop(proxy);
    ensure!(
        retry_records(&pair)? > 0,
        "the outage should have queued records"
    );
    // In-doubt transactions from the moment of the kill are resolved first.
    reconciler(&pair, "recover", &["--min-age-secs", "0"])
        .await?
        .exits(0)?;
    reconciler(&pair, "replay", &[]).await?.exits(0)?;
    assert_nothing_queued(&pair)?;
    assert_verified(&pair, PGBENCH_KEYED).await
}

/// Scenario 14 with mirroring: pgbench tpcb-like in every query mode through the proxy
/// leaves the two databases equal with nothing queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_modes_mirror_exactly() -> Result<()> {
    let (pair, _proxy, url) = pgbench_behind_proxy().await?;
    for mode in ["simple", "extended", "prepared"] {
        run_client_ok(
            tokio::process::Command::new(pgbench_bin())
                .args(["-c", "4", "-t", "50", "-n", "-M", mode])
                .arg(&url),
            &format!("pgbench -M {mode}"),
            Duration::from_secs(120),
        )
        .await?;
    }
    assert_pgbench_level(&pair).await
}
