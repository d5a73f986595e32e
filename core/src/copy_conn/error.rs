//! What can go wrong on a COPY session, and how a failed startup is told.

use crate::handshake::{HandshakeError, ServerError};

/// What went wrong on a [`CopyConn`](super::CopyConn).
#[derive(Debug, thiserror::Error)]
pub enum CopyConnError {
    #[error("the database URL is not valid")]
    Url(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("TLS to {addr}: {source}")]
    Negotiate {
        addr: String,
        #[source]
        source: crate::tls_stream::NegotiateError,
    },
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: timed out after {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("the server asked for a password and the URL has none")]
    NoPassword,
    /// An authentication method not supported here, a failed SCRAM exchange, or one that
    /// `channel_binding` refuses.
    #[error("authentication: {0}")]
    Auth(#[source] HandshakeError),
    #[error("{0}")]
    Server(ServerError),
    #[error("reading from or writing to the server")]
    Io(#[source] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
}

impl CopyConnError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            CopyConnError::Server(e) => Some(e.code()),
            _ => None,
        }
    }

    /// A failed startup; trouble on the stream names the server, as a failed connect does.
    pub(super) fn of_handshake(e: HandshakeError, addr: impl FnOnce() -> String) -> CopyConnError {
        match e {
            HandshakeError::Server(e) => CopyConnError::Server(e),
            HandshakeError::NoPassword => CopyConnError::NoPassword,
            HandshakeError::Protocol(m) => CopyConnError::Protocol(m),
            HandshakeError::Io(source) => CopyConnError::Connect {
                addr: addr(),
                source,
            },
            HandshakeError::Closed => CopyConnError::Connect {
                addr: addr(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during startup",
                ),
            },
            other => CopyConnError::Auth(other),
        }
    }
}
