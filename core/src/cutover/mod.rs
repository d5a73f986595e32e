//! The cutover flag: which database serves reads and takes writes, agreed by every proxy
//! instance. The state (phase, epoch, percent) lives in the old database's `_switchyard`
//! schema (`schema`); a change is proposed, confirmed by every live instance, then
//! committed under a new epoch (`flip`).

mod checks;
pub mod done;
mod flip;
pub mod kafka_backlog;
mod pause;
mod proposal;
mod request;
mod schema;
pub mod sequences;
mod status;
mod verdict;
pub mod warmup;

pub use checks::next_checklist;
pub use flip::{flip, FlipReport};
pub use pause::MARGIN as SEQUENCE_MARGIN;
pub use proposal::cancel;
pub use request::{FlipError, FlipRequest};
pub use schema::{ensure_schema, CHANNEL, HEARTBEAT_SQL};
pub use status::{status, Instance, LogEntry, Status};
pub use verdict::{Check, Checks};

use std::fmt;
use std::str::FromStr;

/// Where reads and writes go. Every phase before `Done` can go back to any earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Old serves reads and writes; new follows in lockstep.
    Shadow,
    /// A percentage of sessions (sticky per session) read from new.
    Canary,
    /// Autocommit reads from new; writes still authoritative on old.
    ReadsNew,
    /// New authoritative and captured; old kept equal as the secondary.
    WritesNew,
    /// Old detached.
    Done,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Shadow,
        Phase::Canary,
        Phase::ReadsNew,
        Phase::WritesNew,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Shadow => "shadow",
            Phase::Canary => "canary",
            Phase::ReadsNew => "reads-new",
            Phase::WritesNew => "writes-new",
            Phase::Done => "done",
        }
    }

    /// Whether a session whose canary draw is `draw` (0..100) reads from new.
    pub fn reads_from_new(self, percent: u8, draw: u8) -> bool {
        match self {
            Phase::Shadow => false,
            Phase::Canary => draw < percent,
            Phase::ReadsNew | Phase::WritesNew | Phase::Done => true,
        }
    }

    /// Whether any session may read from new in this phase.
    pub fn any_reads_new(self, percent: u8) -> bool {
        match self {
            Phase::Shadow => false,
            Phase::Canary => percent > 0,
            _ => true,
        }
    }

    /// Phases a build of the proxy can run.
    pub fn available(self) -> bool {
        true
    }

    /// Which database takes the client's statements (the primary) in this phase.
    pub fn direction(self) -> crate::direction::Direction {
        match self {
            Phase::WritesNew | Phase::Done => crate::direction::Direction::NewToOld,
            _ => crate::direction::Direction::OldToNew,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database error with the server's code and message (tokio-postgres alone says only
/// "db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown cutover phase {0:?} (expected one of shadow, canary, reads-new, writes-new, done)"
)]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_and_print_the_same() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
        }
        assert_eq!("READS-NEW".parse::<Phase>(), Ok(Phase::ReadsNew));
        assert!("reads_new".parse::<Phase>().is_err());
    }

    #[test]
    fn canary_reads_new_for_draws_below_the_percentage() {
        assert!(!Phase::Shadow.reads_from_new(100, 0));
        assert!(Phase::Canary.reads_from_new(30, 29));
        assert!(!Phase::Canary.reads_from_new(30, 30));
        assert!(!Phase::Canary.reads_from_new(0, 0));
        assert!(Phase::ReadsNew.reads_from_new(0, 99));
        assert!(!Phase::Canary.any_reads_new(0));
    }
}
