//! Primary → client: forwards what the server sends in whole messages, one write per read,
//! and watches the few that matter (ReadyForQuery ends a request and reports the
//! transaction status, ErrorResponse is counted, ParameterStatus is followed).

use super::flow::Flow;
use super::{count_server_error, make_room, note_parameter, End, IdleSignal, MIN_READ_CHUNK};
use crate::classify::StatementClass;
use crate::protocol::Frame;
use crate::shared::Shared;
use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use switchyard_core::tls_stream::write_flushed;
use switchyard_core::tls_stream::DbRead;
use tokio::io::{AsyncReadExt, AsyncWrite};

/// Primary → client.
pub(crate) struct Downstream<'a, W> {
    pub(in crate::frontend) shared: &'a Shared,
    pub(in crate::frontend) flow: &'a Mutex<Flow>,
    pub(in crate::frontend) became_idle: &'a IdleSignal,
    /// Only an idle timeout needs the wake-up; without one, skip the cost per request.
    pub(in crate::frontend) wants_idle_signal: bool,
    /// The server explained itself before closing; otherwise the proxy tells the client.
    pub(in crate::frontend) server_said_fatal: bool,
    pub(in crate::frontend) server: DbRead,
    pub(in crate::frontend) buf: BytesMut,
    pub(in crate::frontend) client: W,
    pub(in crate::frontend) drained: &'a tokio::sync::Notify,
    pub(in crate::frontend) writing: &'a AtomicBool,
    pub(in crate::frontend) conforming_strings: &'a AtomicBool,
    pub(in crate::frontend) client_text: &'a super::ClientText,
    pub(in crate::frontend) server_utf8: bool,
    /// Only dual writes wait for this pump to drain.
    pub(in crate::frontend) mirroring: bool,
}

impl<W: AsyncWrite + Unpin> Downstream<'_, W> {
    pub(in crate::frontend) async fn run(&mut self) -> End {
        let mut room = MIN_READ_CHUNK;
        let mut last_read = 0;
        loop {
            let mut end = 0;
            let mut became_idle = false;
            while let Some(header) = self.buf.get(end..end + Frame::HEADER) {
                let tag = header[0];
                let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                if len < 4 {
                    return End::Io(
                        "primary",
                        std::io::Error::other(format!("invalid message length {len}")),
                    );
                }
                let total = len as usize + 1;
                if self.buf.len() < end + total {
                    self.buf.reserve(end + total - self.buf.len());
                    break;
                }
                match tag {
                    b'Z' => {
                        became_idle |=
                            self.ready_for_query(self.buf.get(end + 5).copied().unwrap_or(b'I'))
                    }
                    b'E' => {
                        self.server_said_fatal |=
                            count_server_error(&self.buf[end + 5..end + total])
                    }
                    b'S' => {
                        if let Some(encoding) = note_parameter(
                            self.conforming_strings,
                            self.client_text,
                            self.mirroring.then_some(self.server_utf8),
                            &self.buf[end + 5..end + total],
                        ) {
                            return End::ClientEncoding(encoding);
                        }
                    }
                    _ => {}
                }
                end += total;
            }
            if end > 0 {
                let chunk = self.buf.split_to(end);
                if self.mirroring {
                    self.writing.store(true, Ordering::Relaxed);
                }
                if let Err(e) = write_flushed(&mut self.client, &chunk).await {
                    return End::Io("client", e);
                }
                if self.mirroring {
                    self.writing.store(false, Ordering::Relaxed);
                    self.drained.notify_one();
                }
            }
            if became_idle {
                if self.shared.shutting_down() {
                    return End::Shutdown;
                }
                if self.wants_idle_signal {
                    self.became_idle.notify_one();
                }
            }
            make_room(&mut self.buf, &mut room, last_read);
            match self.server.read_buf(&mut self.buf).await {
                Ok(0) => return End::ServerClosed,
                Ok(n) => last_read = n,
                Err(e) => return End::Io("primary", e),
            }
        }
    }

    /// Ends the oldest pending request; true if the session is now idle.
    fn ready_for_query(&self, status: u8) -> bool {
        let Ok(mut f) = self.flow.lock() else {
            return false;
        };
        if let Some((started, class)) = f.pending.pop_front() {
            let class = class.unwrap_or(StatementClass::Other);
            crate::metrics::hot().request_duration[class.index()]
                .record(started.elapsed().as_secs_f64());
        }
        f.status(status);
        f.idle()
    }
}
