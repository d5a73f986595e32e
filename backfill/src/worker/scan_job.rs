//! Scanning old (`--scan-old`, bulk mode): a whole table whose chunks this worker
//! claimed, read in one scan and loaded on several sessions (see `table_scan`).

use super::{Retry, Worker};
use crate::chunk_table::Claim;
use crate::connect::connect_writer;
use crate::table_scan;
use anyhow::{Context, Result};

pub(super) async fn run(w: &mut Worker<'_>, claims: Vec<Claim>) -> Result<()> {
    let shared = w.shared;
    let name = w.name.clone();
    let Some(table) = claims.first().map(|c| c.table_name.clone()) else {
        return Ok(());
    };
    let outcome = async {
        let t = shared.table(&table)?;
        let key = t
            .pass_key
            .with_context(|| format!("claimed {table} to scan, but it has no integer key"))?;
        let s = w.sessions().await?;
        // One loading session per job (at most 4), as chunk copies would use.
        let cfg = &shared.cfg;
        let mut news = futures_util::future::try_join_all(
            (0..cfg.backfill.jobs.clamp(1, 4))
                .map(|_| connect_writer(&cfg.new, cfg.backfill.write_mode())),
        )
        .await?;
        tracing::info!(table = %table, sessions = news.len(), "Scanning old for the whole table.");
        table_scan::run(
            &s.old,
            &mut s.old_copy,
            &mut news,
            &t.plan,
            key,
            &claims,
            &name,
            &shared.throttle,
        )
        .await
    }
    .await;
    let log = |error: &str| {
        tracing::warn!(table = %table, error = %error, "Scan failed; the table's chunks will be retried.");
    };
    match w.settle(outcome, Retry::Copy(&claims), log).await? {
        Some(Some(rows)) => {
            tracing::info!(table = %table, rows, "Scanned and loaded; verified after the rebuild.");
        }
        Some(None) => {
            tracing::warn!(table = %table, "The table's chunks were taken over by another worker while this one scanned it; rolled back.");
        }
        None => {}
    }
    Ok(())
}
