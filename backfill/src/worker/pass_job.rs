//! Bulk mode: the claimed chunks of one table verified in one pass over the table on new
//! (see `table_pass`).

use super::{Retry, Worker};
use crate::chunk_table::PassChunk;
use crate::connect::{connect_copy, Db};
use crate::table_pass;
use anyhow::{Context, Result};
use switchyard_core::copy_conn::CopyConn;

pub(super) async fn run(w: &mut Worker<'_>, chunks: Vec<PassChunk>) -> Result<()> {
    let shared = w.shared;
    let Some(table) = chunks.first().map(|c| c.claim.table_name.clone()) else {
        return Ok(());
    };
    let outcome = async {
        let t = shared.table(&table)?;
        let key = t.pass_key.with_context(|| {
            format!("chunks of {table} carry stream checksums, but its columns cannot be hashed that way")
        })?;
        let s = w.sessions().await?;
        // The pass is what is left of the table's work while its key is rebuilt: read it
        // on up to `--jobs` sessions at once (at most 4), so it does not leave cores idle.
        let extra = shared.cfg.backfill.jobs.clamp(1, 4) - 1;
        let mut more = futures_util::future::try_join_all(
            (0..extra).map(|_| connect_copy(Db::New, &shared.cfg.new, 0)),
        )
        .await?;
        let mut conns: Vec<&mut CopyConn> = std::iter::once(&mut s.new_copy)
            .chain(more.iter_mut())
            .collect();
        table_pass::run(&s.new, &mut conns, &t.plan, key, chunks.clone()).await
    }
    .await;
    let log = |error: &str| {
        tracing::warn!(table = %table, error = %error, "Verification pass failed; it will be retried.");
    };
    let claims = chunks.iter().map(|c| &c.claim).collect();
    if let Some(result) = w.settle(outcome, Retry::Verify(claims), log).await? {
        table_pass::record(&shared.control, &w.name, result, |t, rows| {
            shared.progress.chunk_done(t, rows)
        })
        .await?;
    }
    Ok(())
}
