//! `recover`: finishes prepared transactions the proxy left on the new database, as the
//! old database's commit status of each says.

use crate::config::ReconcilerConfig;
use crate::connect::{connect, Db};
use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_core::recover::{resolve_in_doubt, RecoverReport};

pub async fn run(cfg: &ReconcilerConfig, min_age: Duration) -> Result<RecoverReport> {
    let old = connect(Db::Old, &cfg.old).await?;
    let new = connect(Db::New, &cfg.new).await?;
    resolve_in_doubt(&old, &new, min_age)
        .await
        .context("resolving in-doubt transactions")
}
