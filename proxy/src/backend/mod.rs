//! The proxy's connections to the databases: connect, start up, authenticate, and hand back
//! a raw message stream.

mod auth;
mod connect;
mod error;
pub mod read;

pub use connect::{connect, send_cancel, BackendConn, CancelAddr, ConnectOptions};
pub use error::BackendError;

/// Which database a connection goes to; names it in messages and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Old,
    New,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Old => "old",
            Role::New => "new",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} database", self.as_str())
    }
}
