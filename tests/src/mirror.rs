//! Helpers for tests of dual writes: SQL on one cluster, the reconciler against a pair,
//! and polling the new side (COMMIT PREPARED reaches it a moment after the client's answer).

use crate::pg::PgCluster;
use crate::proxy::{Pair, DB};
use crate::reconciler::{run_reconciler, ReconcilerRun};
use anyhow::{ensure, Result};
use std::time::{Duration, Instant};

/// How long the reconciler may run in a test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The proxy's log in test output, filtered by `SWITCHYARD_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `sql` through psql on database [`DB`] of `c`; lets the runtime move its other tasks
/// (an in-process proxy) off this worker meanwhile.
pub fn on(c: &PgCluster, sql: &str) -> Result<String> {
    tokio::task::block_in_place(|| c.psql(DB, sql))
}

/// A pair of clusters with `schema` run on both.
pub async fn pair_with(schema: &str) -> Result<Pair> {
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    on(&pair.old, schema)?;
    on(&pair.new, schema)?;
    for c in [&pair.old, &pair.new] {
        on(c, CHECKPOINT)?;
    }
    Ok(pair)
}

/// The test clusters run with `synchronous_commit = off`: a commit can sit in WAL buffers
/// for a few hundred milliseconds, and a test that soon after stops a cluster with
/// `stop_immediate` loses it (the schema is gone from new after the restart, and replay
/// fails on a missing table). A checkpoint writes the setup out.
const CHECKPOINT: &str = "CHECKPOINT";

/// `switchyard-reconciler CMD --old .. --new .. EXTRA...` against the pair.
pub async fn reconciler(pair: &Pair, cmd: &str, extra: &[&str]) -> Result<ReconcilerRun> {
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let mut args = vec![cmd, "--old", &old, "--new", &new];
    args.extend_from_slice(extra);
    run_reconciler(&args, RUN_TIMEOUT).await
}

/// The reconciler's verify must find `tables` (comma-separated) equal on both sides.
pub async fn assert_verified(pair: &Pair, tables: &str) -> Result<()> {
    let run = reconciler(pair, "verify", &["--tables", tables]).await?;
    ensure!(
        run.code() == Some(0),
        "verify found differences:\n{}",
        run.text()
    );
    Ok(())
}

/// Polls `sql` on `c` until it returns `want`, for up to 10 s.
pub fn eventually(c: &PgCluster, sql: &str, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = on(c, sql)?;
        if got == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{sql}: got {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pair of clusters, each with `pgbench -i -s 1` (the same accounts, branches, tellers).
pub async fn pgbench_pair() -> Result<Pair> {
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    tokio::task::block_in_place(|| -> Result<()> {
        for c in [&pair.old, &pair.new] {
            let out = std::process::Command::new(crate::clients::pgbench_bin())
                .args(["-i", "-s", "1", "-q"])
                .arg(c.url(DB))
                .output()?;
            ensure!(
                out.status.success(),
                "pgbench -i: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            c.psql(DB, CHECKPOINT)?;
        }
        Ok(())
    })?;
    Ok(pair)
}

/// Every row of `table` on `c` as text, sorted.
pub fn rows(c: &PgCluster, table: &str) -> Result<String> {
    on(c, &format!("SELECT t::text FROM {table} t ORDER BY 1"))
}

/// Asserts every table in `tables` holds the same rows on both clusters, compared row by
/// row. COMMIT PREPARED reaches new a moment after the client's answer, so new is polled
/// for up to 10 s; nothing is replayed.
pub fn assert_same(pair: &Pair, tables: &[&str]) -> Result<()> {
    for table in tables {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let old = rows(&pair.old, table)?;
            let new = rows(&pair.new, table)?;
            if old == new {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{table} differs:\n--- old\n{old}\n--- new\n{new}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Rows in the retry log on old (nothing should be queued when new took everything).
pub fn retry_records(pair: &Pair) -> Result<i64> {
    Ok(on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")?.parse()?)
}
