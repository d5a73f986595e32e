//! Why a byte stream is not valid protocol.

/// A protocol violation found while decoding. Each variant says what was wrong so the log line
/// and the client's error can be specific.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {len} in message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes (max_message_size)")]
    TooLarge { len: usize, max: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("invalid frontend message type {0}")]
    UnknownFrontendTag(u8),
    #[error("malformed {what} message: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, detail: &'static str) -> Self {
        ProtocolError::Malformed { what, detail }
    }
}
