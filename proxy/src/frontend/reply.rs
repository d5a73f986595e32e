//! Writing the proxy's own messages to a client.

use crate::protocol::backend::{error_response, ErrorFields};
use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Sends an ErrorResponse and flushes; errors writing are ignored because the connection is
/// about to be closed anyway.
pub async fn send_error<W: AsyncWrite + Unpin>(w: &mut W, fields: &ErrorFields) {
    let mut out = BytesMut::new();
    error_response(&mut out, fields);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}

pub fn fatal(code: &str, message: impl Into<String>) -> ErrorFields {
    ErrorFields::new("FATAL", code, message)
}
