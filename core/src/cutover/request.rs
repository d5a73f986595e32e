//! What a flip is asked to do and how it can fail, shared by every step of the flip.

use super::verdict::Checks;
use super::Phase;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FlipRequest {
    pub to: Phase,
    /// Share of sessions reading from new in `canary` (0..=100).
    pub percent: u8,
    /// Who asked (shown in the log and the timeline).
    pub by: String,
    pub dry_run: bool,
    /// How long instances get to confirm, and then to run the new epoch.
    pub timeout: Duration,
    /// An instance not heard from for this long is not live.
    pub lease: Duration,
    /// A confirmed shadow mismatch this recent refuses a flip that moves reads to new.
    pub mismatch_window: Duration,
    /// Refuse a flip that moves reads or writes to new while new's buffer cache hit ratio
    /// is more than `COLD_BY` under old's (otherwise it is only shown).
    pub require_warm: bool,
    /// Dual writes run without prepared transactions (`mirror.mode = "lockstep"`): the next
    /// secondary need not allow them.
    pub lockstep: bool,
    /// With the Kafka retry log: its records the reconcilers have not replayed count in the
    /// backlog check.
    pub kafka: Option<crate::retry_kafka::KafkaSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlipError {
    #[error("cutover to {to} refused by the pre-flight checks:\n{}", checks.failures())]
    Refused { to: Phase, checks: Checks },
    #[error("cutover to {to} abandoned: {reason}; every instance stays on epoch {epoch}")]
    Abandoned {
        to: Phase,
        epoch: i64,
        reason: String,
        waiting_for: Vec<String>,
    },
    #[error("another flip is being confirmed: to {phase} (epoch {epoch}) by {by}")]
    Busy {
        phase: String,
        epoch: i64,
        by: String,
    },
    #[error("invalid cutover request: {0}")]
    Invalid(String),
    #[error("cutover to {to} not started: {reason}")]
    Pause { to: Phase, reason: String },
    #[error("cutover control table: {}", super::pg_error(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl FlipError {
    /// The checks to show with the error, if any.
    pub fn checks(&self) -> Option<&Checks> {
        match self {
            FlipError::Refused { checks, .. } => Some(checks),
            _ => None,
        }
    }
}

/// The proposal is gone: `cutover cancel`, or another coordinator found it stale.
pub(super) fn withdrawn(req: &FlipRequest, staying: i64) -> FlipError {
    FlipError::Abandoned {
        to: req.to,
        epoch: staying,
        reason: "the proposal was withdrawn (cutover cancel, or another coordinator took it \
                 for stale)"
            .into(),
        waiting_for: Vec::new(),
    }
}
