//! A connection that runs simple statements and `COPY ... TO STDOUT`, handing the COPY data
//! out as large contiguous buffers instead of one message per row.
//!
//! Why: a backfill reads every row of old (and, to verify, of new) as binary COPY. Through
//! tokio-postgres each row is one `CopyData` message, parsed, sliced into its own `Bytes`
//! and passed through the driver's channel: measured at about a quarter of the backfill's
//! CPU on 10M rows, on a machine whose cores the two servers need. Here the socket is
//! read in large pieces and the payloads of the `CopyData` messages in them are copied
//! out back to back (the COPY stream is a byte stream; message boundaries carry no
//! meaning), so the cost per row is one frame header skipped. Once a COPY over TCP has
//! handed out a megabyte, the reader also waits for 128 KB to arrive before it wakes
//! (`crate::rcvlowat`), instead of waking for every few 8 KB writes of the server.
//!
//! TCP, with TLS as the URL's `sslmode` says ([`crate::tls`], as every other connection),
//! or a Unix socket (never encrypted, as with libpq); authentication trust, cleartext
//! password, MD5, or SCRAM-SHA-256 (`-PLUS` bound to the TLS connection where offered).

mod error;
mod open;

pub use error::CopyConnError;

use crate::handshake::ServerError;
use bytes::{Buf, BytesMut};
use open::Stream;
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 256 * 1024;
/// Once a COPY has handed out this much, the reader waits for [`BATCH_BYTES`] to arrive
/// before it wakes (TCP only, see `crate::rcvlowat`). Smaller COPYs never wait.
const BATCH_AFTER: usize = 1024 * 1024;
const BATCH_BYTES: usize = 128 * 1024;
/// How long a batched read waits before it takes what has arrived: the last piece of a
/// COPY is smaller than a batch.
const BATCH_WAIT: Duration = Duration::from_millis(1);
/// Largest message other than `CopyData` accepted (errors, notices, parameter status).
const MAX_OTHER_MESSAGE: usize = 16 * 1024 * 1024;

/// One session. After any error other than a server error the session is
/// [`broken`](CopyConn::is_broken) and should be dropped.
pub struct CopyConn {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    /// The socket's receive low-water mark: 1 (the default) except while a batched read
    /// has raised it.
    lowat: usize,
    /// The highest mark set since the current COPY started.
    lowat_peak: usize,
    wbuf: BytesMut,
    broken: bool,
}

impl std::fmt::Debug for CopyConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyConn")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl CopyConn {
    /// Connects to a `postgres://` URL or key=value string, as `application_name`.
    pub async fn connect(url: &str, application_name: &str) -> Result<CopyConn, CopyConnError> {
        let mut rbuf = BytesMut::with_capacity(READ_SIZE);
        let stream = open::connect(url, application_name, &mut rbuf, MAX_OTHER_MESSAGE).await?;
        Ok(CopyConn {
            stream,
            rbuf,
            lowat: 1,
            lowat_peak: 1,
            wbuf: BytesMut::new(),
            broken: false,
        })
    }

    /// True after an I/O or protocol error: the session's state is unknown.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Runs `sql` (one or more statements, simple protocol), discarding any rows.
    pub async fn execute(&mut self, sql: &str) -> Result<(), CopyConnError> {
        self.send_query(sql).await?;
        let mut failed = None;
        loop {
            let (tag, body) = self.next_message().await?;
            match tag {
                b'Z' => break,
                b'E' => failed = Some(server_error(&body)),
                b'G' | b'H' => {
                    // A COPY in a batch: not what this runs.
                    self.broken = true;
                    return Err(CopyConnError::Protocol(
                        "COPY is not allowed in execute()".into(),
                    ));
                }
                _ => {}
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Starts `sql`, a `COPY ... TO STDOUT`; read its data with [`CopyOut::read`].
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, CopyConnError> {
        self.send_query(sql).await?;
        loop {
            let (tag, body) = self.next_message().await?;
            match tag {
                b'H' => break,
                b'E' => {
                    let err = server_error(&body);
                    self.until_ready().await?;
                    return Err(err);
                }
                b'N' | b'S' | b'A' => {}
                other => {
                    self.broken = true;
                    return Err(CopyConnError::Protocol(format!(
                        "expected the start of a COPY, got message {:?}",
                        other as char
                    )));
                }
            }
        }
        self.lowat_peak = self.lowat;
        Ok(CopyOut {
            conn: self,
            in_data: 0,
            done: false,
            handed_out: 0,
        })
    }

    /// Runs a `COPY ... TO STDOUT` in text format and returns all of its output as text
    /// (for a few values, e.g. `COPY (SELECT pg_export_snapshot()) TO STDOUT`).
    pub async fn copy_out_text(&mut self, sql: &str) -> Result<String, CopyConnError> {
        let mut copy = self.copy_out(sql).await?;
        let mut out = BytesMut::new();
        while copy.read(&mut out).await? {}
        String::from_utf8(out.to_vec())
            .map_err(|_| CopyConnError::Protocol("COPY output is not UTF-8".into()))
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), CopyConnError> {
        if self.broken {
            return Err(CopyConnError::Protocol("the session broke earlier".into()));
        }
        frontend::query(sql, &mut self.wbuf).map_err(CopyConnError::Io)?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), CopyConnError> {
        let r = crate::tls_stream::write_flushed(&mut self.stream, &self.wbuf).await;
        self.wbuf.clear();
        r.map_err(|e| self.fail(CopyConnError::Io(e)))
    }

    fn fail(&mut self, e: CopyConnError) -> CopyConnError {
        self.broken = true;
        e
    }

    /// Reads more from the socket; `Closed` at end of stream.
    async fn fill(&mut self) -> Result<(), CopyConnError> {
        // With the mark raised, a reply smaller than it would never wake the reader.
        if self.lowat > 1 {
            self.lower_mark()?;
        }
        self.read_more().await
    }

    /// [`CopyConn::fill`] for the data of a large COPY: waits until a batch has arrived,
    /// or at most [`BATCH_WAIT`], then takes what has.
    async fn fill_batched(&mut self) -> Result<(), CopyConnError> {
        if self.lowat == 1 {
            if let Some(tcp) = self.stream.tcp() {
                match crate::rcvlowat::set(tcp, BATCH_BYTES) {
                    Ok(v) => {
                        self.lowat = v;
                        self.lowat_peak = self.lowat_peak.max(v);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "Could not raise the receive low-water mark; reading unbatched.")
                    }
                }
            }
        }
        if self.lowat > 1 {
            if let Ok(read) = tokio::time::timeout(BATCH_WAIT, self.read_more()).await {
                return read;
            }
        }
        // Lowering the mark makes the kernel look again at what has arrived, and wake
        // the reader if anything has.
        self.fill().await
    }

    fn lower_mark(&mut self) -> Result<(), CopyConnError> {
        if let Some(tcp) = self.stream.tcp() {
            if let Err(e) = crate::rcvlowat::set(tcp, 1) {
                return Err(self.fail(CopyConnError::Io(e)));
            }
        }
        self.lowat = 1;
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), CopyConnError> {
        self.rbuf.reserve(READ_SIZE);
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(self.fail(CopyConnError::Closed)),
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(CopyConnError::Io(e))),
        }
    }

    /// The next whole message: its type byte and the message (type byte and length
    /// included, as `backend::Message::parse` takes it).
    async fn next_message(&mut self) -> Result<(u8, BytesMut), CopyConnError> {
        loop {
            if let Some(len) = self.whole_message_len()? {
                let msg = self.rbuf.split_to(len);
                return Ok((msg[0], msg));
            }
            self.fill().await?;
        }
    }

    /// The length (with type byte and length field) of the message at the start of the
    /// buffer, when all of it is there.
    fn whole_message_len(&mut self) -> Result<Option<usize>, CopyConnError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if len < 4 || (self.rbuf[0] != b'd' && len > MAX_OTHER_MESSAGE) {
            return Err(self.fail(CopyConnError::Protocol(format!(
                "message {:?} of length {len}",
                self.rbuf[0] as char
            ))));
        }
        Ok((self.rbuf.len() > len).then_some(len + 1))
    }

    async fn until_ready(&mut self) -> Result<(), CopyConnError> {
        loop {
            let (tag, _) = self.next_message().await?;
            if tag == b'Z' {
                return Ok(());
            }
        }
    }
}

/// A `COPY ... TO STDOUT` under way. Reading it to the end (until [`CopyOut::read`] gives
/// `false`) leaves the session ready for the next statement; dropping it before breaks the
/// session.
pub struct CopyOut<'a> {
    conn: &'a mut CopyConn,
    /// Bytes of the current `CopyData` message still to come.
    in_data: usize,
    done: bool,
    /// Bytes handed out so far.
    handed_out: usize,
}

impl CopyOut<'_> {
    /// Appends the COPY data that has arrived (waiting for some when none has) to `out`;
    /// `false` when the COPY has ended and no data was added.
    pub async fn read(&mut self, out: &mut BytesMut) -> Result<bool, CopyConnError> {
        let before = out.len();
        loop {
            if self.done {
                return Ok(false);
            }
            self.take_buffered(out)?;
            if out.len() > before {
                self.handed_out += out.len() - before;
                return Ok(true);
            }
            if self.in_data == 0 && self.control_message().await? {
                continue;
            }
            if self.handed_out >= BATCH_AFTER {
                self.conn.fill_batched().await?;
            } else {
                self.conn.fill().await?;
            }
        }
    }

    /// The socket's receive low-water mark in effect (`crate::rcvlowat`): 1 except while a
    /// large COPY is read over TCP.
    pub fn receive_mark(&self) -> usize {
        self.conn.lowat
    }

    /// The highest receive low-water mark this COPY's reads set (whether or not a batch
    /// then arrived within [`BATCH_WAIT`], which a busy machine may miss).
    pub fn peak_receive_mark(&self) -> usize {
        self.conn.lowat_peak
    }

    /// Moves buffered data out, skipping the headers of `CopyData` messages; stops at the
    /// end of the buffer or at another message.
    fn take_buffered(&mut self, out: &mut BytesMut) -> Result<(), CopyConnError> {
        let mut bad = None;
        {
            let buf = &mut self.conn.rbuf;
            loop {
                if self.in_data > 0 {
                    let n = self.in_data.min(buf.len());
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    self.in_data -= n;
                    continue;
                }
                if buf.len() < 5 || buf[0] != b'd' {
                    break;
                }
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if len < 4 {
                    bad = Some(len);
                    break;
                }
                buf.advance(5);
                self.in_data = len - 4;
            }
        }
        match bad {
            Some(len) => Err(self
                .conn
                .fail(CopyConnError::Protocol(format!("CopyData of length {len}")))),
            None => Ok(()),
        }
    }

    /// Handles one whole message other than data at the start of the buffer (the end of
    /// the COPY, a notice); `false` when none is there yet. A server error is returned
    /// once the session is ready for the next statement.
    async fn control_message(&mut self) -> Result<bool, CopyConnError> {
        let Some(len) = self.conn.whole_message_len()? else {
            return Ok(false);
        };
        let msg = self.conn.rbuf.split_to(len);
        match msg[0] {
            b'c' | b'C' | b'N' | b'S' | b'A' => {}
            b'Z' => self.done = true,
            b'E' => {
                let err = server_error(&msg);
                self.conn.until_ready().await?;
                self.done = true;
                return Err(err);
            }
            other => {
                return Err(self.conn.fail(CopyConnError::Protocol(format!(
                    "message {:?} during a COPY",
                    other as char
                ))))
            }
        }
        Ok(true)
    }
}

impl Drop for CopyOut<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.broken = true;
        }
    }
}

/// An ErrorResponse (the whole message: type byte and length first) as an error.
fn server_error(whole: &[u8]) -> CopyConnError {
    match ServerError::parse(whole.get(5..).unwrap_or_default()) {
        Ok(e) => CopyConnError::Server(e),
        Err(e) => CopyConnError::Protocol(e.to_string()),
    }
}
