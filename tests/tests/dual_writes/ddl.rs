//! DDL under dual writes: mirrored as text in the lockstep transaction, the catalog cache
//! following it, and the `ddl` policies.

use super::*;
use anyhow::{ensure, Context, Result};
use switchyard_tests::mirror::{init_tracing, on, proxied, same_rows};
use switchyard_tests::proxy::{batch_each, batch_fails, connect_proxy, start_proxy, Pair};
use tokio_postgres::error::SqlState;

/// DDL is mirrored as text in the same lockstep transaction, and the catalog cache follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_is_mirrored_and_counted() -> Result<()> {
    let s = proxied("SELECT 1").await?;
    let c = connect_proxy(&s.proxy).await?;
    batch_each(
        &c,
        &[
            "CREATE TABLE d (id int PRIMARY KEY, a text)",
            "INSERT INTO d VALUES (1, 'x')",
            "ALTER TABLE d ADD COLUMN b int DEFAULT 7",
            "INSERT INTO d VALUES (2, 'y', 8)",
            "TRUNCATE d",
            "INSERT INTO d VALUES (3, 'z', 9)",
        ],
    )
    .await?;
    same_rows(&s.pair, "d")?;
    // DDL text resolves names with the client session's search_path, on new too.
    batch_each(
        &c,
        &[
            "CREATE SCHEMA other",
            "SET search_path = other, public",
            "CREATE TABLE inother (id int PRIMARY KEY)",
            "INSERT INTO inother VALUES (1)",
        ],
    )
    .await?;
    same_rows(&s.pair, "other.inother")?;
    ensure!(
        on(
            &s.pair.new,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'inother' AND schemaname = 'other'"
        )? == "1"
    );
    let (status, _) = api_status(&s.proxy).await?;
    let modes = &status["mirror"]["statement_mode"];
    ensure!(
        modes.as_object().is_some_and(|m| m.len() >= 3),
        "statement-mode counts by fingerprint: {modes}"
    );
    Ok(())
}

/// The `ddl` policy: `reject` refuses DDL with 0A000 and changes nothing; `primary-only`
/// runs it on old alone and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_policies() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let mut cfg = pair.config();
    cfg.mirror.ddl = switchyard_proxy::config::DdlPolicy::Reject;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    // DDL is refused.
    let sql = "CREATE TABLE nope (id int)";
    batch_fails(&c, sql, &SqlState::FEATURE_NOT_SUPPORTED).await?;
    c.batch_execute("SELECT 1")
        .await
        .context("the session goes on")?;
    ensure!(
        on(
            &pair.old,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'nope'"
        )? == "0"
    );
    drop(c);
    drop(proxy);

    let mut cfg = pair.config();
    cfg.mirror.ddl = switchyard_proxy::config::DdlPolicy::PrimaryOnly;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    c.batch_execute("CREATE TABLE only_old (id int PRIMARY KEY)")
        .await?;
    ensure!(
        on(
            &pair.old,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_old'"
        )? == "1"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_old'"
        )? == "0"
    );
    Ok(())
}
