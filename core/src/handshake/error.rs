//! What can end a startup handshake, and a server's own refusal, kept field by field so a
//! caller can relay it (the proxy passes a database's refusal on to its client as is).

use crate::tls_stream::BindingError;
use std::io;

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The server refused the session (wrong password, unknown database, too many
    /// connections): its ErrorResponse.
    #[error("{0}")]
    Server(ServerError),
    #[error("the server asked for a password and the URL has none")]
    NoPassword,
    #[error("the server asked for authentication method {} ({code}), which is not supported here", method_name(*.code))]
    UnsupportedAuth { code: i32 },
    #[error("SCRAM authentication, at the server's {stage}: {source}")]
    Scram {
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Binding(#[from] BindingError),
    #[error("unexpected message from the server during startup: {0}")]
    Protocol(String),
    #[error("reading from or writing to the server during startup")]
    Io(#[source] io::Error),
    #[error("the server closed the connection during startup")]
    Closed,
}

impl HandshakeError {
    /// The SQLSTATE of a server's refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            HandshakeError::Server(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// Names of the authentication request codes nothing here answers.
pub fn method_name(code: i32) -> &'static str {
    match code {
        2 => "Kerberos",
        6 => "SCM credentials",
        7 | 8 => "GSSAPI",
        9 => "SSPI",
        _ => "unknown",
    }
}

/// The fields of an ErrorResponse (or NoticeResponse), by their one-byte codes, in the
/// order the server sent them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    pub fields: Vec<(u8, String)>,
}

impl ServerError {
    /// Decodes a message body. Text that is not UTF-8 (a server whose messages are in
    /// another encoding, before `client_encoding` applies) is kept, with replacements,
    /// rather than lose the error.
    pub fn parse(body: &[u8]) -> Result<ServerError, HandshakeError> {
        let mut fields = Vec::new();
        let mut rest = body;
        loop {
            let (&code, after) = rest
                .split_first()
                .ok_or_else(|| HandshakeError::Protocol("truncated ErrorResponse".into()))?;
            if code == 0 {
                return Ok(ServerError { fields });
            }
            let nul = after.iter().position(|&b| b == 0).ok_or_else(|| {
                HandshakeError::Protocol("unterminated ErrorResponse field".into())
            })?;
            fields.push((code, String::from_utf8_lossy(&after[..nul]).into_owned()));
            rest = &after[nul + 1..];
        }
    }

    pub fn field(&self, code: u8) -> &str {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn severity(&self) -> &str {
        self.field(b'S')
    }

    pub fn code(&self) -> &str {
        self.field(b'C')
    }

    pub fn message(&self) -> &str {
        self.field(b'M')
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity(),
            self.message(),
            self.code()
        )
    }
}
