//! Errors reaching or talking to a database, each knowing which database it came from.

use super::Role;
use crate::protocol::backend::ErrorFields;
use crate::protocol::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {role} at {addr}: {source}")]
    Connect {
        role: Role,
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {role} at {addr}")]
    Timeout { role: Role, addr: String },
    #[error("{role} refused the connection: {} (SQLSTATE {})", .fields.message(), .fields.code())]
    Server { role: Role, fields: ErrorFields },
    #[error("{role} asked for authentication method {code}, which the proxy does not support")]
    UnsupportedAuth { role: Role, code: i32 },
    #[error("authenticating to {role}: {detail}")]
    Auth { role: Role, detail: String },
    #[error("protocol error from {role}: {source}")]
    Protocol { role: Role, source: ProtocolError },
    #[error("I/O error with {role}: {source}")]
    Io { role: Role, source: std::io::Error },
    #[error("{role} closed the connection during startup")]
    Closed { role: Role },
    #[error("TLS to {role}: {detail}")]
    Tls { role: Role, detail: String },
}

impl BackendError {
    /// The ErrorResponse a client should see when its session cannot reach the primary.
    /// A server's own refusal (bad database, too many connections) is passed on as is.
    pub fn client_fields(&self) -> ErrorFields {
        match self {
            BackendError::Server { fields, .. } => fields.clone(),
            other => ErrorFields::new("FATAL", "08006", format!("switchyard: {other}")),
        }
    }

    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Connect { .. } => "connect",
            BackendError::Timeout { .. } => "timeout",
            BackendError::Server { .. } => "server",
            BackendError::UnsupportedAuth { .. } | BackendError::Auth { .. } => "auth",
            BackendError::Protocol { .. } => "protocol",
            BackendError::Io { .. } | BackendError::Closed { .. } => "io",
            BackendError::Tls { .. } => "tls",
        }
    }
}
