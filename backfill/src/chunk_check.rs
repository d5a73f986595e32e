//! Verifying a chunk after its copy: the range's checksum (row count and the sum of 64-bit
//! row hashes, from `core::checksum`) on both sides; when they differ, the rows' hashes on
//! both sides, merged by key, and every differing key re-synced from old under a row lock
//! (`core::resync`: upsert the current image, or delete a row old no longer has, which is
//! what removes a zombie left by a delete that raced the copy). Then the checksums again.
//!
//! Why the range stays equal afterwards while the proxy dual-writes: a re-synced row was
//! written from old's image while old's row was share-locked, so any later write to it on
//! old is applied on new after ours, in lockstep. A row that compared equal was not
//! touched by our copy after the proxy's last write to it (our insert never replaces a
//! row), so new holds what lockstep dual writes put there.

use crate::plan::TablePlan;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchyard_core::checksum::{ChecksumError, RangeChecksum, RangeQueries};
use switchyard_core::connect::Writer;
use switchyard_core::key::{KeyRange, KeyText};
use switchyard_core::resync::{resync_keys, ResyncError};
use tokio_postgres::Client;

/// Compare-and-repair rounds before a chunk that keeps differing is left `unverified`
/// (rows changing faster than they can be compared; the reconciler's verify, with its
/// re-checks, is the tool for such a table).
pub const ROUNDS: u32 = 3;

/// Why a chunk could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("checksumming the chunk")]
    Checksum(#[from] ChecksumError),
    #[error("repairing the chunk's differing rows")]
    Resync(#[from] ResyncError),
}

/// The result of a check.
#[derive(Debug, Clone)]
pub struct Checked {
    pub equal: bool,
    pub old: RangeChecksum,
    pub new: RangeChecksum,
    /// Rows re-synced (upserted or deleted on new).
    pub repaired: u64,
}

/// Longest wait for old's transactions that were writing the table when a chunk's copy
/// committed.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(60);

/// Waits until every transaction that was writing `table` on old when this is called has
/// ended, at most `cap`; returns those still open then (their virtual transaction ids).
/// Transactions in `skip` (ones a wait already gave up on) are not waited for again.
///
/// Called between a chunk's copy and its check while the proxy dual-writes: a delete
/// whose mirrored half ran on new before our copy brought the row (finding nothing), but
/// whose transaction commits on old only after our check, would leave the row on new,
/// checked equal while old still showed it. Once those transactions are over, the check
/// sees their outcome and repairs the row. A writer of the table holds its
/// `RowExclusiveLock` on it until its transaction ends; readers (the backfill's own
/// copies) take none.
pub async fn wait_for_writers_in_flight(
    old: &Client,
    table: &str,
    cap: Duration,
    skip: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let open: Vec<String> = old
        .query_one(
            "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}') FROM pg_catalog.pg_locks \
             WHERE locktype = 'relation' AND relation = $1::text::regclass \
               AND mode = 'RowExclusiveLock' AND granted AND pid IS NOT NULL \
               AND pid <> pg_backend_pid() AND NOT virtualtransaction = ANY($2)",
            &[&table, &skip],
        )
        .await?
        .get(0);
    if open.is_empty() {
        return Ok(open);
    }
    let deadline = Instant::now() + cap;
    loop {
        let still: Vec<String> = old
            .query_one(
                "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}') \
                 FROM pg_catalog.pg_locks WHERE virtualtransaction = ANY($1) AND pid IS NOT NULL",
                &[&open],
            )
            .await?
            .get(0);
        if still.is_empty() || Instant::now() >= deadline {
            return Ok(still);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks `range` of a table and repairs it from old (see the module doc).
pub async fn check_chunk(
    old: &mut Client,
    new: &mut Writer,
    plan: &TablePlan,
    q: &RangeQueries,
    range: &KeyRange,
) -> Result<Checked, CheckError> {
    let mut repaired = 0u64;
    let mut round = 0;
    loop {
        let (a, b) = tokio::try_join!(q.checksum(old, range), q.checksum(new, range))?;
        if a == b || round == ROUNDS {
            return Ok(Checked {
                equal: a == b,
                old: a,
                new: b,
                repaired,
            });
        }
        round += 1;
        let (ha, hb) = tokio::try_join!(
            q.row_hashes(old, range, None),
            q.row_hashes(new, range, None)
        )?;
        let keys = differing_keys(ha, hb);
        if !keys.is_empty() {
            let counts = resync_keys(old, new, &plan.new, &keys).await?;
            repaired += counts.upserted + counts.deleted;
        }
    }
}

/// Keys whose row is missing on one side or hashes differently.
pub fn differing_keys(old: Vec<(KeyText, i64)>, new: Vec<(KeyText, i64)>) -> Vec<KeyText> {
    let mut by_key: HashMap<KeyText, i64> = old.into_iter().collect();
    let mut out = Vec::new();
    for (k, h) in new {
        match by_key.remove(&k) {
            Some(o) if o == h => {}
            _ => out.push(k),
        }
    }
    out.extend(by_key.into_keys());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> KeyText {
        vec![Some(s.to_string())]
    }

    #[test]
    fn differing_keys_are_missing_extra_and_changed() {
        let old = vec![(k("1"), 10), (k("2"), 20), (k("3"), 30)];
        let new = vec![(k("1"), 10), (k("2"), 21), (k("4"), 40)];
        let mut d = differing_keys(old, new);
        d.sort();
        assert_eq!(d, vec![k("2"), k("3"), k("4")]);
    }
}
