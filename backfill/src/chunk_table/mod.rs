//! The backfill's state on the new database, shared by every process working on a pair:
//! `_switchyard.backfill_tables` (one row per planned table), `_switchyard.backfill_chunks`
//! (one row per half-open key range: status, attempts, lease, rows, checksums of both
//! sides, timings, worker), `_switchyard.backfill_control` (pause and rate, changed while
//! running) and `_switchyard.backfill_deferred` (index and constraint definitions dropped
//! by `--defer-indexes`, so an interrupted run can restore them).
//!
//! - `status`: the chunk states, the only place their stored names are written.
//! - `schema`: creating the tables; `plan`: storing a plan.
//! - `claim`: claims and leases; `outcome`: recording results. Both change states only
//!   through `transition`, which checks the state a chunk changes from.
//! - `control`: the pause flag and rate; `totals`: where the work stands.

mod claim;
mod control;
mod outcome;
mod plan;
mod schema;
mod status;
mod totals;
mod transition;

pub use claim::{claim, claim_pass, claim_scan, claim_verify, renew_leases, Claim, PassChunk};
pub use control::{read_control, set_paused, Control};
pub use outcome::{
    back_to_copied, fail, finish, finish_verify, record_copied, record_scanned, ChunkOutcome,
};
pub use plan::{insert_plan, planned_tables, PlannedTable};
pub(crate) use schema::PLAN_LOCK;
pub use schema::{ensure_schema, exists};
pub use status::{sql_set, ChunkStatus, UnknownChunkStatus, FINISHED, HELD, OPEN, UNCOPIED};
pub use totals::{bulk_loading, open_chunks, ready_to_rebuild, totals, TableTotals};

/// A statement on the chunk table failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} (chunk table on the new database)")]
pub struct ChunkTableError {
    pub what: &'static str,
    #[source]
    pub source: tokio_postgres::Error,
}

fn err(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ChunkTableError {
    move |source| ChunkTableError { what, source }
}
