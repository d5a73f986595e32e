//! Real clients through the in-process proxy (scenarios 14, 17, 18): psql, pgbench in all
//! three query modes, psycopg 3 and asyncpg, cancel requests and statement_timeout, and
//! LISTEN/NOTIFY. Each test checks what the clients saw and what ended up on the old cluster.
//!
//! `SWITCHYARD_LOG=debug` (an `EnvFilter` directive) shows the proxy's log in the test output.

use anyhow::{Context, Result};
use switchyard_proxy::RunningProxy;
use switchyard_tests::mirror::init_tracing;
use switchyard_tests::proxy::{proxy_url, start_proxy, Pair, DB};
use switchyard_tests::PgCluster;

#[path = "clients/cancel.rs"]
mod cancel;
#[path = "clients/notify.rs"]
mod notify;
#[path = "clients/pgbench.rs"]
mod pgbench;
#[path = "clients/psql.rs"]
mod psql;
#[path = "clients/python.rs"]
mod python;

/// A fresh pair of clusters and a proxy in front of the old one.
struct Setup {
    pair: Pair,
    proxy: RunningProxy,
    url: String,
}

async fn setup() -> Result<Setup> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let proxy = start_proxy(pair.config()).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    Ok(Setup { pair, proxy, url })
}

/// `sql` on the old cluster directly (psql over its unix socket). `block_in_place` lets the
/// runtime move its other tasks (the proxy) off this worker while psql runs.
async fn old_psql(pair: &Pair, sql: &str) -> Result<String> {
    let port = pair.old.port();
    let sql = sql.to_string();
    tokio::task::block_in_place(|| pair.old.psql(DB, &sql))
        .with_context(|| format!("on the old cluster (port {port}): {sql}"))
}
