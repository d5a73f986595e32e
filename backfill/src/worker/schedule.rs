//! What a worker does next, decided from the chunk table. The order is the load's: scans
//! of old, then chunk copies (their tables' dependencies first), then bulk mode's second
//! phase (one-pass verification, range checks, rebuilds), so that verification never
//! holds back a copy that another table waits for.

use super::Shared;
use crate::chunk_table::{self, Claim, PassChunk};
use anyhow::Result;

/// The next thing a worker does.
pub(super) enum Job {
    /// Scanning old (bulk mode): every chunk of one table, read in one scan.
    Scan(Vec<Claim>),
    /// One chunk to copy (and, unless bulk-loading, check).
    Copy(Claim),
    /// Bulk mode: the copied chunks of one table, verified in one pass over new.
    Pass(Vec<PassChunk>),
    /// Bulk mode: one copied chunk, checked range by range once its table's key is back.
    Verify(Claim),
    /// Bulk mode: tables whose chunks are all copied, whose keys and indexes wait to be
    /// rebuilt (by one worker of one process; the others wait and take over if it dies).
    Rebuild(Vec<String>),
    /// Chunks are held (here or in another process): wait for them, or for their
    /// worker to die.
    Wait,
    /// Nothing is left that any worker could do.
    Finished,
    /// Failpoint `exit-before-verify`: look again shortly.
    #[cfg(feature = "failpoints")]
    Recheck,
}

/// Claims the next job for `worker`.
pub(super) async fn next_job(shared: &Shared, worker: &str) -> Result<Job> {
    let s = &shared.cfg.backfill;
    let lease = shared.cfg.lease();
    let control = &*shared.control;
    if s.scan_old && s.bulk_mode() && !shared.scannable.is_empty() {
        let claims =
            chunk_table::claim_scan(control, &shared.scannable, s.max_attempts, worker, lease)
                .await?;
        if !claims.is_empty() {
            return Ok(Job::Scan(claims));
        }
    }
    let claim = chunk_table::claim(control, &shared.order, s.max_attempts, worker, lease).await?;
    if let Some(claim) = claim {
        return Ok(Job::Copy(claim));
    }
    #[cfg(feature = "failpoints")]
    if crate::failpoint::armed("exit-before-verify") {
        // No worker of this process verifies or rebuilds: each waits until every chunk is
        // copied (the others may still be copying), then the process exits.
        if !chunk_table::ready_to_rebuild(control, &shared.order)
            .await?
            .is_empty()
        {
            tracing::warn!("Failpoint exit-before-verify: exiting.");
            std::process::exit(3);
        }
        return Ok(Job::Recheck);
    }
    // A table read back in one pass needs no index, so it goes on while another worker
    // rebuilds; range by range needs the table's indexes back.
    let pass = chunk_table::claim_pass(control, &shared.order, worker, lease).await?;
    if !pass.is_empty() {
        return Ok(Job::Pass(pass));
    }
    if let Some(claim) = chunk_table::claim_verify(control, &shared.order, worker, lease).await? {
        return Ok(Job::Verify(claim));
    }
    let (open, running) = chunk_table::open_chunks(control, &shared.order, s.max_attempts).await?;
    if open == 0 {
        return Ok(Job::Finished);
    }
    let ready = chunk_table::ready_to_rebuild(control, &shared.order).await?;
    if !ready.is_empty() {
        return Ok(Job::Rebuild(ready));
    }
    if running > 0 {
        return Ok(Job::Wait);
    }
    // Nothing running and nothing claimable: what is left waits on a table whose chunks
    // failed for good. One more look, in case a parent table was finished between the
    // claim and the count.
    let again = chunk_table::claim(control, &shared.order, s.max_attempts, worker, lease).await?;
    Ok(again.map_or(Job::Finished, Job::Copy))
}
