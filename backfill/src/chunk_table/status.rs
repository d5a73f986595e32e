//! The states of a chunk, and the only place their names are spelled: SQL reads them from
//! here, so that a statement cannot name a state the table does not have. The stored
//! text of each is part of the table's format (databases of earlier versions hold it).

use std::fmt;
use std::str::FromStr;

/// Where a chunk stands. Chunk by chunk: `Pending` → `Running` → `Done` or `Unverified`,
/// or `Failed` and claimed again while attempts are left. Bulk mode copies first and
/// verifies once the table's key is back: `Running` → `Copied` → `Verifying` → `Done` or
/// `Unverified` (or back to `Copied` when the verification does not end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkStatus {
    Pending,
    Running,
    Copied,
    Verifying,
    Done,
    Unverified,
    Failed,
}

use ChunkStatus::*;

impl ChunkStatus {
    /// In the order of the table's `CHECK` constraint, which existing databases hold as
    /// written: changing it would make every process recreate the constraint.
    pub const ALL: [ChunkStatus; 7] = [
        Pending, Running, Copied, Verifying, Done, Unverified, Failed,
    ];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Pending => "pending",
            Running => "running",
            Copied => "copied",
            Verifying => "verifying",
            Done => "done",
            Unverified => "unverified",
            Failed => "failed",
        }
    }

    /// As an SQL string literal (the names need no escaping).
    pub fn sql(self) -> String {
        format!("'{}'", self.as_str())
    }

    /// Nothing more will be done to the chunk (`unverified` is reported, not retried).
    pub fn is_finished(self) -> bool {
        FINISHED.contains(&self)
    }
}

/// Finished: what a table that depends on this one waits for.
pub const FINISHED: &[ChunkStatus] = &[Done, Unverified];

/// Rows not yet in new for good: the table's copy (and a bulk rebuild) waits for these.
pub const UNCOPIED: &[ChunkStatus] = &[Pending, Running, Failed];

/// Held by a worker under a lease.
pub const HELD: &[ChunkStatus] = &[Running, Verifying];

/// Still to be worked on whatever the attempts (`failed` counts only with attempts left).
pub const OPEN: &[ChunkStatus] = &[Pending, Running, Copied, Verifying];

/// `('a', 'b')`, for `status IN ...` (a literal list, not a parameter: the statements
/// that use it are built once and keep their parameters for the values that vary).
pub fn sql_set(statuses: &[ChunkStatus]) -> String {
    let names: Vec<String> = statuses.iter().map(|s| s.sql()).collect();
    format!("({})", names.join(", "))
}

impl fmt::Display for ChunkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `status` the table's constraint would not allow: a database written by a newer
/// version, or edited by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown chunk status {0:?} in the chunk table")]
pub struct UnknownChunkStatus(pub String);

impl FromStr for ChunkStatus {
    type Err = UnknownChunkStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChunkStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownChunkStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_stored_text() {
        for status in ChunkStatus::ALL {
            assert_eq!(status.as_str().parse::<ChunkStatus>(), Ok(status));
        }
        assert_eq!(
            "Done".parse::<ChunkStatus>(),
            Err(UnknownChunkStatus("Done".into()))
        );
    }

    #[test]
    fn the_stored_texts_are_those_of_existing_databases() {
        assert_eq!(
            sql_set(&ChunkStatus::ALL),
            "('pending', 'running', 'copied', 'verifying', 'done', 'unverified', 'failed')"
        );
    }

    #[test]
    fn only_done_and_unverified_are_finished() {
        let finished: Vec<_> = ChunkStatus::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect();
        assert_eq!(finished, [Done, Unverified]);
    }
}
