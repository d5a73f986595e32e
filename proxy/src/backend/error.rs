//! Errors reaching or talking to a database, each knowing which database it came from.

use super::Db;
use crate::protocol::backend::ErrorFields;
use switchyard_core::handshake::HandshakeError;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to the {role} database at {addr}: {source}")]
    Connect {
        role: Db,
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to the {role} database at {addr}")]
    Timeout { role: Db, addr: String },
    #[error("the {role} database refused the connection: {} (SQLSTATE {})", .fields.message(), .fields.code())]
    Server { role: Db, fields: ErrorFields },
    #[error("the {role} database asked for authentication method {code}, which the proxy does not support")]
    UnsupportedAuth { role: Db, code: i32 },
    #[error("authenticating to the {role} database: {detail}")]
    Auth { role: Db, detail: String },
    #[error("protocol error from the {role} database: {detail}")]
    Protocol { role: Db, detail: String },
    #[error("I/O error with the {role} database: {source}")]
    Io { role: Db, source: std::io::Error },
    #[error("the {role} database closed the connection during startup")]
    Closed { role: Db },
    #[error("TLS to the {role} database: {detail}")]
    Tls { role: Db, detail: String },
}

impl BackendError {
    /// A failed startup, named after the database it came from.
    pub(super) fn of_handshake(role: Db, e: HandshakeError) -> BackendError {
        match e {
            HandshakeError::Server(e) => BackendError::Server {
                role,
                fields: ErrorFields { fields: e.fields },
            },
            HandshakeError::UnsupportedAuth { code } => {
                BackendError::UnsupportedAuth { role, code }
            }
            HandshakeError::Protocol(detail) => BackendError::Protocol { role, detail },
            HandshakeError::Io(source) => BackendError::Io { role, source },
            HandshakeError::Closed => BackendError::Closed { role },
            e @ (HandshakeError::NoPassword
            | HandshakeError::Scram { .. }
            | HandshakeError::Binding(_)) => BackendError::Auth {
                role,
                detail: e.to_string(),
            },
        }
    }

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
