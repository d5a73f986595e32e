//! Bulk mode: checking (and repairing) one copied chunk range by range, once its table's
//! key is back.

use super::{Retry, Worker};
use crate::chunk_check::check_chunk;
use crate::chunk_table::{self, ChunkOutcome, Claim};
use anyhow::{Context, Result};
use std::time::Instant;

pub(super) async fn run(w: &mut Worker<'_>, claim: Claim) -> Result<()> {
    let shared = w.shared;
    let outcome = async {
        let t = shared.table(&claim.table_name)?;
        let s = w.sessions().await?;
        let started = Instant::now();
        let checked = check_chunk(&mut s.old, &mut s.new, &t.plan, &t.queries, &claim.range)
            .await
            .with_context(|| format!("verifying chunk {} of {}", claim.chunk_no, t.plan.name))?;
        anyhow::Ok(ChunkOutcome {
            rows_old: checked.old.rows,
            rows_new: checked.new.rows,
            checksum_old: checked.old.sum,
            checksum_new: checked.new.sum,
            rows_repaired: checked.repaired as i64,
            verify_ms: started.elapsed().as_millis() as i64,
            ..ChunkOutcome::checked(checked.equal, "bulk")
        })
    }
    .await;
    let log = |error: &str| {
        tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, error = %error, "Chunk verification failed; it will be retried.");
    };
    if let Some(o) = w.settle(outcome, Retry::Verify(vec![&claim]), log).await? {
        let recorded = chunk_table::finish_verify(&shared.control, &claim, &w.name, &o).await?;
        w.counted(
            recorded,
            &claim,
            o.rows_old,
            "Chunk's verification was taken over by another worker; its result counts.",
        );
    }
    Ok(())
}
