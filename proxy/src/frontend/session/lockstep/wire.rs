//! The mediator's I/O: frames from the client and the primary, what is bound for each, and
//! `settle`, which reads the primary's answers until every expectation is met and does
//! with each what `expect` says.

use super::expect::{Action, Expect};
use super::Mediation;
use crate::frontend::session::End;
use crate::protocol::backend::ErrorFields;
use crate::protocol::frontend::is_known_tag;
use crate::protocol::{Frame, ProtocolError};
use bytes::{BufMut, Bytes};
use switchyard_core::tls_stream::write_flushed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(super) fn io_err(what: &str) -> End {
    End::Io("primary", std::io::Error::other(what.to_string()))
}

fn proto(e: ProtocolError) -> End {
    End::Io("primary", std::io::Error::other(e.to_string()))
}

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn flush_primary(&mut self) -> Result<(), End> {
        if !self.to_primary.is_empty() {
            // The server holds extended-protocol results until a Flush or Sync; the proxy
            // waits for them now, whatever the client will send later. Behind anything else
            // a Flush would be a message of its own: read while the server is idle, it stops
            // the idle-in-transaction timer, and nothing starts it again.
            if ends_extended(&self.to_primary) {
                self.to_primary.put_slice(b"H\0\0\0\x04");
            }
            let chunk = self.to_primary.split();
            write_flushed(&mut self.up.server, &chunk)
                .await
                .map_err(|e| End::Io("primary", e))?;
        }
        Ok(())
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            let chunk = self.out.split();
            self.down
                .client
                .write_all(&chunk)
                .await
                .map_err(|e| End::Io("client", e))?;
            self.down
                .client
                .flush()
                .await
                .map_err(|e| End::Io("client", e))?;
        }
        Ok(())
    }

    pub(super) async fn flush_all(&mut self) -> Result<(), End> {
        self.flush_primary().await?;
        self.flush_client().await
    }

    pub(super) async fn client_frame(&mut self) -> Result<Frame, End> {
        loop {
            if let Some(header) = self.up.buf.first() {
                if !is_known_tag(*header) {
                    return Err(End::ClientProtocol(ProtocolError::UnknownFrontendTag(
                        *header,
                    )));
                }
            }
            match Frame::parse(&mut self.up.buf, self.max) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(End::ClientProtocol(e)),
            }
            self.flush_all().await?;
            self.up.buf.reserve(8192);
            match self.up.client.read_buf(&mut self.up.buf).await {
                Ok(0) => return Err(End::ClientClosed),
                Ok(_) => {}
                Err(e) => return Err(End::Io("client", e)),
            }
        }
    }

    async fn primary_frame(&mut self) -> Result<Frame, End> {
        self.flush_primary().await?;
        loop {
            if let Some(f) = Frame::parse(&mut self.down.buf, usize::MAX >> 1).map_err(proto)? {
                return Ok(f);
            }
            if self.out.len() > 64 * 1024 {
                self.flush_client().await?;
            }
            self.down.buf.reserve(16 * 1024);
            match self.down.server.read_buf(&mut self.down.buf).await {
                Ok(0) => return Err(End::ServerClosed),
                Ok(_) => {}
                Err(e) => return Err(End::Io("primary", e)),
            }
        }
    }

    /// The next answer, with notices, notifications and parameter changes passed on.
    async fn response(&mut self) -> Result<Frame, End> {
        loop {
            let f = self.primary_frame().await?;
            tracing::trace!(tag = %(f.tag() as char), "mediator: from the primary");
            match f.tag() {
                b'N' | b'A' => self.out.put_slice(f.raw()),
                b'S' => {
                    if let Some(encoding) = self.up.note_parameter_status(&f.body()) {
                        return Err(End::ClientEncoding(encoding));
                    }
                    self.out.put_slice(f.raw());
                }
                _ => return Ok(f),
            }
        }
    }

    pub(super) fn send(&mut self, raw: &[u8]) {
        self.to_primary.put_slice(raw);
    }

    pub(super) fn relay_error(&mut self, raw: &[u8]) {
        crate::frontend::session::count_server_error(&raw[Frame::HEADER..]);
        self.out.put_slice(raw);
        self.error_seen = true;
    }

    /// Reads answers until every expectation is met.
    pub(super) async fn settle(&mut self) -> Result<(), End> {
        while !self.expect.is_empty() {
            let f = self.response().await?;
            let status = f.raw().get(Frame::HEADER).copied().unwrap_or(b'I');
            match self.expect.on_message(f.tag(), status) {
                Action::Client => self.out.put_slice(f.raw()),
                Action::Hold => self.held.push(f.into_raw()),
                Action::Drop => {}
                Action::Row => {
                    let body = f.raw().slice(Frame::HEADER..);
                    let values = crate::protocol::describe::data_row(&body)
                        .map_err(proto)?
                        .into_iter()
                        .map(|v| v.map(Bytes::copy_from_slice))
                        .collect();
                    self.rows.push(values);
                }
                Action::CopyIn => {
                    let extended = self.expect.front_is_execute();
                    self.copy_in(&f, extended).await?
                }
                Action::Error {
                    injected,
                    needs_sync,
                } => {
                    if injected {
                        // The first error is the cause; statements queued behind it (as
                        // Queries, which an error does not skip) fail only because of it.
                        if self.swallowed.is_none() {
                            self.swallowed = Some(decode_error(&f));
                        }
                    } else {
                        self.relay_error(f.raw());
                        self.failed = true;
                    }
                    if needs_sync {
                        self.to_primary.put_slice(b"S\0\0\0\x04");
                        self.expect.push(Expect::Ready { forward: false });
                    }
                }
                Action::Ready { status, forward } => {
                    self.status = status;
                    if forward {
                        self.out.put_slice(f.raw());
                    }
                }
                Action::Unexpected => {
                    return Err(io_err(&format!(
                        "the old database answered out of order ({:?} while expecting more)",
                        f.tag() as char
                    )))
                }
            }
        }
        Ok(())
    }

    /// COPY ... FROM STDIN started: relays the client's data to the primary until it ends.
    /// Started by an extended-protocol Execute, the server ignored the batch's Sync while
    /// copying; the one the client sends after CopyDone goes along.
    async fn copy_in(&mut self, start: &Frame, extended: bool) -> Result<(), End> {
        self.out.put_slice(start.raw());
        self.flush_client().await?;
        loop {
            let f = self.client_frame().await?;
            self.send(f.raw());
            match f.tag() {
                b'd' => {
                    if self.to_primary.len() > 256 * 1024 {
                        let chunk = self.to_primary.split();
                        write_flushed(&mut self.up.server, &chunk)
                            .await
                            .map_err(|e| End::Io("primary", e))?;
                    }
                }
                b'c' | b'f' => break,
                // Flush and Sync are ignored by the server during COPY.
                b'H' | b'S' => {}
                _ => return Ok(()),
            }
        }
        if extended {
            let f = self.client_frame().await?;
            self.send(f.raw());
        }
        Ok(())
    }
}

/// The last message in `buf` is an extended-protocol one whose results the server holds
/// back until a Flush or Sync.
fn ends_extended(buf: &[u8]) -> bool {
    let mut last = None;
    let mut at = 0;
    while let Some(len) = buf.get(at + 1..at + 5) {
        last = buf.get(at).copied();
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 1 + len;
    }
    matches!(last, Some(b'P' | b'B' | b'E' | b'D' | b'C'))
}

pub(super) fn decode_error(f: &Frame) -> ErrorFields {
    match crate::protocol::backend::BackendMessage::decode(f) {
        Ok(crate::protocol::backend::BackendMessage::ErrorResponse(e)) => e,
        _ => ErrorFields::new("ERROR", "XX000", "unreadable error"),
    }
}

#[cfg(test)]
mod tests {
    use super::ends_extended;

    #[test]
    fn a_flush_goes_only_behind_extended_messages() {
        let query = b"Q\0\0\0\x0eSELECT 1;\0";
        let execute = b"E\0\0\0\x09\0\0\0\0\0";
        let sync = b"S\0\0\0\x04";
        assert!(!ends_extended(query));
        assert!(ends_extended(execute));
        assert!(!ends_extended(&[&execute[..], sync].concat()));
        assert!(ends_extended(&[&query[..], execute].concat()));
        assert!(!ends_extended(&[&execute[..], query].concat()));
        assert!(!ends_extended(b""));
    }
}
