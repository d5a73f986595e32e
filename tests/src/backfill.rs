//! The real `switchyard-backfill` binary: run to completion against a pair, or spawned to
//! be killed halfway; the pairs and chunk-table probes its tests share.

use crate::mirror::{on, pair_with};
use crate::proxy::{Pair, ProxyProcess, DB};
use crate::PgCluster;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// How long a backfill may run in a test.
pub const BACKFILL_TIMEOUT: Duration = Duration::from_secs(180);

/// Path of the `switchyard-backfill` binary: `SWITCHYARD_BACKFILL_BIN`, else next to the
/// test executable's target directory (`scripts/test.sh` puts it there).
pub fn backfill_bin() -> Result<PathBuf> {
    crate::process::workspace_bin("switchyard-backfill", "SWITCHYARD_BACKFILL_BIN")
}

/// What a backfill run printed and how it exited.
pub type BackfillRun = crate::reconciler::ToolRun;

/// A `switchyard-backfill ARGS` command with the test's `SWITCHYARD_*` variables removed
/// (so they cannot change what is tested), output piped, killed on drop.
pub fn backfill_command(args: &[&str]) -> Result<tokio::process::Command> {
    Ok(crate::reconciler::tool_command(backfill_bin()?, args))
}

/// Waits for a spawned backfill's output (killed after `timeout`).
pub async fn wait_backfill(child: tokio::process::Child, timeout: Duration) -> Result<BackfillRun> {
    crate::reconciler::wait_tool(child, "switchyard-backfill", timeout).await
}

/// Runs `switchyard-backfill ARGS` to completion.
pub async fn run_backfill(args: &[&str], timeout: Duration) -> Result<BackfillRun> {
    let child = backfill_command(args)?
        .spawn()
        .context("starting switchyard-backfill")?;
    wait_backfill(child, timeout).await
}

/// `--old` and `--new` of `pair`, followed by `extra`.
pub fn pair_args(pair: &Pair, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--old".to_string(),
        pair.old.url(DB),
        "--new".to_string(),
        pair.new.url(DB),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `switchyard-backfill --old .. --new .. EXTRA...` against the pair, to completion.
pub async fn backfill(pair: &Pair, extra: &[&str]) -> Result<BackfillRun> {
    let args = pair_args(pair, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_backfill(&refs, BACKFILL_TIMEOUT).await
}

/// [`backfill_command`] with `BACKFILL_TEST_FAILPOINT=failpoint`; fails at once, naming the
/// build command, when the binary was built without failpoints.
pub fn backfill_failpoint_command(
    args: &[&str],
    failpoint: &str,
) -> Result<tokio::process::Command> {
    let env = [("BACKFILL_TEST_FAILPOINT", failpoint)];
    crate::process::require_failpoints_for(&backfill_bin()?, &env)?;
    let mut cmd = backfill_command(args)?;
    cmd.envs(env);
    Ok(cmd)
}

/// As [`backfill`], with one environment variable set (a test failpoint, a log filter),
/// killed after `timeout`.
pub async fn backfill_with_env(
    pair: &Pair,
    extra: &[&str],
    (key, value): (&str, &str),
    timeout: Duration,
) -> Result<BackfillRun> {
    let args = pair_args(pair, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::process::require_failpoints_for(&backfill_bin()?, &[(key, value)])?;
    let child = backfill_command(&refs)?
        .env(key, value)
        .spawn()
        .context("starting switchyard-backfill")?;
    wait_backfill(child, timeout).await
}

/// Spawns `switchyard-backfill` against `pair` with `extra` flags, to be waited for with
/// [`wait_backfill`] (or killed midway).
pub fn spawn_backfill(pair: &Pair, extra: &[&str]) -> Result<tokio::process::Child> {
    let args = pair_args(pair, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    backfill_command(&refs)?
        .spawn()
        .context("starting switchyard-backfill")
}

/// `sql` on `c`, `None` when it fails (the chunk table may not exist yet).
pub fn try_on(c: &PgCluster, sql: &str) -> Option<String> {
    on(c, sql).ok()
}

/// Number of chunks of `table` (as the chunk table names it) with `status`.
pub fn chunks_with(c: &PgCluster, table: &str, status: &str) -> Option<i64> {
    try_on(
        c,
        &format!(
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE table_name = '\"public\".\"{table}\"' AND status = '{status}'"
        ),
    )?
    .parse()
    .ok()
}

/// Number of primary keys of `table` on `c`.
pub fn primary_keys(c: &PgCluster, table: &str) -> Result<String> {
    on(
        c,
        &format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p'"
        ),
    )
}

/// A pair with `schema` on both sides and `rows` (SQL) written on old alone: what a
/// backfill is to copy.
pub async fn pair_with_old_rows(schema: &str, rows: &str) -> Result<Pair> {
    let pair = pair_with(schema).await?;
    on(&pair.old, rows)?;
    Ok(pair)
}

/// [`pair_with_old_rows`], and the real proxy in front of it (for writes that race the
/// backfill).
pub async fn old_rows_behind_proxy(schema: &str, rows: &str) -> Result<(Pair, ProxyProcess)> {
    let pair = pair_with_old_rows(schema, rows).await?;
    let proxy = tokio::task::block_in_place(|| ProxyProcess::spawn_for(&pair, &[]))?;
    Ok((pair, proxy))
}

/// A pair with `big` (key, a second index, 20,000 rows on old) created on both sides.
pub async fn big_pair() -> Result<Pair> {
    pair_with_old_rows(
        "CREATE TABLE big (id int PRIMARY KEY, n int, pad text);
         CREATE INDEX big_n ON big (n);",
        "INSERT INTO big SELECT g, g % 97, repeat('x', 40) FROM generate_series(1, 20000) g",
    )
    .await
}

/// A pair with table `t (id KEY PRIMARY KEY, v text)` and `rows` rows on old (`v` the
/// md5 of the key).
pub async fn md5_pair(key: &str, rows: u32) -> Result<Pair> {
    pair_with_old_rows(
        &format!("CREATE TABLE t (id {key} PRIMARY KEY, v text)"),
        &format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"),
    )
    .await
}
