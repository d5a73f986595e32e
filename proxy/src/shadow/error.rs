//! Why one side of a shadow comparison produced no result. Each error knows its side.

use crate::backend::{BackendError, Db};
use crate::protocol::ProtocolError;

/// SQLSTATE 25006: the statement tried to write inside the read-only shadow transaction.
pub const READ_ONLY_VIOLATION: &str = "25006";
/// SQLSTATE 57014: cancelled, here by the shadow's statement_timeout.
pub const QUERY_CANCELED: &str = "57014";
/// SQLSTATE 55P03: the shadow's lock_timeout fired.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Connect(#[from] BackendError),
    #[error("the {role} database failed moments ago; not tried again yet")]
    Unavailable { role: Db },
    #[error("I/O error with the {role} database: {source}")]
    Io { role: Db, source: std::io::Error },
    #[error("protocol error from the {role} database: {source}")]
    Protocol { role: Db, source: ProtocolError },
    #[error("the {role} database did not answer within {ms} ms")]
    Timeout { role: Db, ms: u64 },
    #[error("the {role} database closed the connection")]
    Closed { role: Db },
    #[error("the {role} database refused the statement: {message} (SQLSTATE {sqlstate})")]
    Server {
        role: Db,
        sqlstate: String,
        message: String,
    },
}

impl SideError {
    /// Stable label for metrics and the status API.
    pub fn kind(&self) -> &'static str {
        match self {
            SideError::Connect(_) => "connect",
            SideError::Unavailable { .. } => "unavailable",
            SideError::Io { .. } | SideError::Closed { .. } => "io",
            SideError::Protocol { .. } => "protocol",
            SideError::Timeout { .. } => "timeout",
            SideError::Server { sqlstate, .. }
                if sqlstate == QUERY_CANCELED || sqlstate == LOCK_NOT_AVAILABLE =>
            {
                "timeout"
            }
            SideError::Server { .. } => "server",
        }
    }

    /// The statement writes: it was stopped by the read-only transaction. Counted as
    /// skipped, not as an error of the database.
    pub fn is_write_attempt(&self) -> bool {
        matches!(self, SideError::Server { sqlstate, .. } if sqlstate == READ_ONLY_VIOLATION)
    }

    /// The connection was found dead (closed or reset), as an idle one is after the
    /// database restarted: worth one more try on a new connection (the statement is
    /// read-only, so running it again is harmless).
    pub fn is_dead_connection(&self) -> bool {
        matches!(self, SideError::Io { .. } | SideError::Closed { .. })
    }

    /// After this error the connection is in an unknown state and is not reused.
    pub fn poisons_connection(&self) -> bool {
        !matches!(
            self,
            SideError::Server { .. } | SideError::Unavailable { .. } | SideError::Connect(_)
        )
    }
}
