//! Reading whole messages from a server connection the proxy drives itself (shadow reads,
//! a session's reads on new), as opposed to the pumps, which forward what they read.

use crate::protocol::{Frame, ProtocolError};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug)]
pub enum ReadError {
    Protocol(ProtocolError),
    Io(std::io::Error),
    /// The server closed the connection.
    Closed,
}

/// The next message in `buf`, reading from `stream` until a whole one has arrived.
pub async fn next_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, ReadError> {
    loop {
        if let Some(f) = Frame::parse(buf, max).map_err(ReadError::Protocol)? {
            return Ok(f);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(buf).await.map_err(ReadError::Io)? == 0 {
            return Err(ReadError::Closed);
        }
    }
}
