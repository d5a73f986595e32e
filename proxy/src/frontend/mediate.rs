//! Requests the proxy handles itself because they write (dual writes): the statement goes
//! to the primary rewritten to return row images, the images go to the secondary in the
//! same transaction while the primary still holds the row locks, and the client gets
//! exactly the messages it would have got without the proxy.
//!
//! The passthrough pumps hand over here only when every earlier request was answered, so
//! the primary's responses from here on belong to what this module sends. It keeps a queue
//! of the responses it expects and treats each according to what it sent.

use super::session::{Downstream, End, Upstream};
use crate::metrics::MIRROR_RETRY_RECORDS_TOTAL;
use crate::mirror::catalog::TableInfo;
use crate::mirror::rewrite::{DmlKind, Plan, TxnOp, EXTRA_COLUMNS};
use crate::mirror::txn::MirrorSession;
use crate::protocol::backend::{error_response, ErrorFields};
use crate::protocol::buf_public::tagged;
use crate::protocol::frontend::{is_known_tag, FrontendMessage, Target};
use crate::protocol::rows::{split_data_row, strip_row_description};
use crate::protocol::{Frame, ProtocolError};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Name of the statement and portal the proxy uses for its own injected statements.
const OWN: &str = "__switchyard";

/// COPY FROM data kept for the secondary; a larger COPY re-syncs its table whole.
const COPY_KEEP_MAX: usize = 64 << 20;

/// Where CommandComplete and other results of an expectation go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Client,
    /// CommandComplete waits until the proxy's own commit succeeded.
    HoldComplete,
    /// The proxy's own statement: nothing reaches the client.
    Swallow,
}

enum Expect {
    /// One response (ParseComplete, BindComplete, CloseComplete) for the client.
    Relay,
    /// One response to a message the proxy injected.
    Swallow,
    Describe {
        statement: bool,
        strip: bool,
    },
    Results {
        capture: Option<Box<CaptureRun>>,
        sink: Sink,
        /// Simple query: results of every statement up to (not including) ReadyForQuery.
        until_ready: bool,
    },
    Ready {
        forward: bool,
    },
}

impl Expect {
    fn name(&self) -> &'static str {
        match self {
            Expect::Relay => "relay",
            Expect::Swallow => "swallow",
            Expect::Describe { .. } => "describe",
            Expect::Results { .. } => "results",
            Expect::Ready { .. } => "ready",
        }
    }
}

/// Row images of one rewritten statement on their way to the secondary.
struct CaptureRun {
    kind: DmlKind,
    client_returning: bool,
    updated_columns: Vec<String>,
    extra_binary: bool,
    /// Original text, for statement mode on tables without a primary key (simple protocol).
    original_sql: Option<String>,
    table: Option<Arc<TableInfo>>,
    oid: u32,
    images: String,
    keys: Vec<String>,
    no_key_tables: Vec<String>,
    rows: u64,
    /// Images in the current batch.
    pending: u64,
    /// `table` holds the lookup result for `oid` (None: not visible yet).
    looked_up: bool,
}

impl CaptureRun {
    fn new(plan: &Plan, extra_binary: bool, original_sql: Option<String>) -> Option<Box<Self>> {
        let Plan::Capture(c) = plan else {
            return None;
        };
        Some(Box::new(CaptureRun {
            kind: c.kind,
            client_returning: c.client_returning,
            updated_columns: c.updated_columns.clone(),
            extra_binary,
            original_sql,
            table: None,
            oid: 0,
            images: String::new(),
            keys: Vec::new(),
            no_key_tables: Vec::new(),
            rows: 0,
            pending: 0,
            looked_up: false,
        }))
    }
}

/// A row image whose table the proxy's own connection could not see yet.
struct Deferred {
    kind: DmlKind,
    updated_columns: Vec<String>,
    original_sql: Option<String>,
    oid: u32,
    image: String,
}

/// At most this many images wait for their table's lookup; beyond, the table is queued
/// for a whole-table re-sync instead.
const MAX_DEFERRED: usize = 100_000;

enum CommitHow {
    /// The proxy opened the transaction (an implicit one) and commits it.
    Injected,
    /// The client's COMMIT, as a simple Query or an extended Execute.
    Client { frame: Frame, simple: bool },
}

struct Mediation<'m, 'a, R, W> {
    up: &'m mut Upstream<'a, R>,
    down: &'m mut Downstream<'a, W>,
    ms: &'m mut MirrorSession,
    out: BytesMut,
    to_primary: BytesMut,
    expect: VecDeque<Expect>,
    pushback: Option<Frame>,
    status: u8,
    /// An error ended the current extended batch: skip to Sync.
    failed: bool,
    /// The proxy began the transaction for an implicit one.
    begun_here: bool,
    error_seen: bool,
    held: Vec<Bytes>,
    last_tag: String,
    swallowed_error: Option<ErrorFields>,
    injected_values: Vec<Option<String>>,
    /// The ReadyForQuery of the current Query was already written.
    ready_sent: bool,
    deferred: Vec<Deferred>,
    /// Oids whose images overflowed `MAX_DEFERRED`.
    overflowed: Vec<u32>,
    resolving: bool,
    max: usize,
}

/// Handles the request at the front of the client's buffer (a Query, or an extended batch
/// through its Sync).
pub(super) async fn mediate<'a, R, W>(
    up: &mut Upstream<'a, R>,
    down: &mut Downstream<'a, W>,
    ms: &mut MirrorSession,
) -> Result<(), End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let status = up.txn_status();
    let max = up.shared.config.max_message_size;
    let started = Instant::now();
    let mut m = Mediation {
        up,
        down,
        ms,
        out: BytesMut::new(),
        to_primary: BytesMut::new(),
        expect: VecDeque::new(),
        pushback: None,
        status,
        failed: false,
        begun_here: false,
        error_seen: false,
        held: Vec::new(),
        last_tag: String::new(),
        swallowed_error: None,
        injected_values: Vec::new(),
        ready_sent: false,
        deferred: Vec::new(),
        overflowed: Vec::new(),
        resolving: false,
        max,
    };
    let result = m.run().await;
    let flushed = m.flush_all().await;
    m.up.set_txn_status(m.status);
    crate::metrics::hot().request_duration[crate::classify::StatementClass::Write.index()]
        .record(started.elapsed().as_secs_f64());
    result.and(flushed)
}

fn io_err(what: &str) -> End {
    End::Io("primary", std::io::Error::other(what.to_string()))
}

fn proto(e: ProtocolError) -> End {
    End::Io("primary", std::io::Error::other(e.to_string()))
}

fn ready(out: &mut BytesMut, status: u8) {
    tagged(out, b'Z', |b| b.put_u8(status));
}

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Result<(), End> {
        if self.up.batch_open {
            // Part of this batch already went through the passthrough; a Sync of our own
            // separates its responses from what this module sends next.
            self.to_primary.put_slice(b"S\0\0\0\x04");
            self.expect.push_back(Expect::Results {
                capture: None,
                sink: Sink::Client,
                until_ready: true,
            });
            self.expect.push_back(Expect::Ready { forward: false });
            self.settle().await?;
            self.up.batch_open = false;
            self.failed = self.error_seen;
        }
        let mut frame = self.client_frame().await?;
        if frame.tag() == b'Q' {
            return self.query(frame).await;
        }
        loop {
            match frame.tag() {
                b'S' => return self.sync(frame).await,
                b'X' => return Err(End::ClientTerminated),
                b'Q' => {
                    // A Query inside an unfinished batch: the server takes it as the batch's
                    // end; so does the proxy.
                    return self.query(frame).await;
                }
                _ if self.failed => {}
                _ => self.extended(frame).await?,
            }
            frame = self.client_frame().await?;
        }
    }

    // --- I/O -------------------------------------------------------------------------------

    async fn flush_primary(&mut self) -> Result<(), End> {
        if !self.to_primary.is_empty() {
            // The server holds extended-protocol results until a Flush or Sync; the proxy
            // waits for them now, whatever the client will send later.
            if !self.to_primary.ends_with(b"S\0\0\0\x04") {
                self.to_primary.put_slice(b"H\0\0\0\x04");
            }
            let chunk = self.to_primary.split();
            self.up
                .server
                .write_all(&chunk)
                .await
                .map_err(|e| End::Io("primary", e))?;
        }
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), End> {
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

    async fn flush_all(&mut self) -> Result<(), End> {
        self.flush_primary().await?;
        self.flush_client().await
    }

    async fn client_frame(&mut self) -> Result<Frame, End> {
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
        if let Some(f) = self.pushback.take() {
            return Ok(f);
        }
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

    /// The next response, with notices, notifications and parameter changes passed on.
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

    fn send(&mut self, raw: &[u8]) {
        self.to_primary.put_slice(raw);
    }

    fn send_msg(&mut self, msg: &FrontendMessage) {
        msg.encode(&mut self.to_primary);
    }

    fn relay_error(&mut self, f: &Frame) {
        super::session::count_server_error(&f.raw()[Frame::HEADER..]);
        self.out.put_slice(f.raw());
        self.error_seen = true;
    }

    // --- expectations --------------------------------------------------------------------

    async fn settle(&mut self) -> Result<(), End> {
        while let Some(exp) = self.expect.pop_front() {
            let injected = matches!(
                exp,
                Expect::Swallow
                    | Expect::Results {
                        sink: Sink::Swallow,
                        ..
                    }
            );
            if self.handle(exp).await? {
                continue;
            }
            // An error: the server skips everything up to the next Sync.
            while matches!(self.expect.front(), Some(e) if !matches!(e, Expect::Ready { .. })) {
                self.expect.pop_front();
            }
            if injected {
                if self.expect.is_empty() {
                    self.to_primary.put_slice(b"S\0\0\0\x04");
                    self.expect.push_back(Expect::Ready { forward: false });
                }
            } else {
                self.failed = true;
            }
        }
        if !self.deferred.is_empty() && !self.resolving {
            self.resolving = true;
            let r = Box::pin(self.resolve_deferred()).await;
            self.resolving = false;
            r?;
        }
        Ok(())
    }

    /// Looks up, on the client's own connection, tables its transaction created, then
    /// mirrors their rows in the order they were written.
    async fn resolve_deferred(&mut self) -> Result<(), End> {
        let deferred = std::mem::take(&mut self.deferred);
        let overflowed = std::mem::take(&mut self.overflowed);
        let mut run: Option<Box<CaptureRun>> = None;
        let mut i = 0;
        while i < deferred.len() {
            let d = &deferred[i];
            let same = run.as_ref().is_some_and(|r| {
                r.oid == d.oid && r.kind == d.kind && r.updated_columns == d.updated_columns
            });
            if !same {
                if let Some(mut r) = run.take() {
                    self.finish_capture(&mut r).await;
                }
                let table = match self
                    .ms
                    .mirror
                    .catalog
                    .table(&self.ms.mirror.control, d.oid)
                    .await
                {
                    Ok(Some(t)) => Some(t),
                    _ => {
                        if self
                            .inject(&crate::mirror::catalog::lookup_sql(d.oid))
                            .await?
                        {
                            let values = std::mem::take(&mut self.injected_values);
                            self.ms.mirror.catalog.from_values(d.oid, &values).ok()
                        } else {
                            None
                        }
                    }
                };
                let Some(table) = table else {
                    self.ms.txn.fatal = Some(format!("table oid {} could not be looked up", d.oid));
                    i += 1;
                    continue;
                };
                let r = Box::new(CaptureRun {
                    kind: d.kind,
                    client_returning: false,
                    updated_columns: d.updated_columns.clone(),
                    extra_binary: false,
                    original_sql: d.original_sql.clone(),
                    table: Some(table.clone()),
                    oid: d.oid,
                    images: String::new(),
                    keys: Vec::new(),
                    no_key_tables: Vec::new(),
                    rows: 0,
                    pending: 0,
                    looked_up: true,
                });
                if r.kind == DmlKind::Update
                    && r.updated_columns
                        .iter()
                        .any(|c| table.primary_key.contains(c))
                {
                    self.ms
                        .queue_table(&table.name, "UPDATE of primary-key columns");
                }
                run = Some(r);
            }
            if let Some(r) = run.as_mut() {
                if let Some(t) = r.table.clone() {
                    self.add_image(r, &t, deferred[i].image.clone()).await;
                }
            }
            i += 1;
        }
        if let Some(mut r) = run.take() {
            self.finish_capture(&mut r).await;
        }
        for oid in overflowed {
            if let Ok(Some(t)) = self
                .ms
                .mirror
                .catalog
                .table(&self.ms.mirror.control, oid)
                .await
            {
                self.ms.queue_table(
                    &t.name,
                    "too many rows written to a table created in the same transaction",
                );
            } else {
                self.ms.txn.fatal = Some(format!("table oid {oid} could not be looked up"));
            }
        }
        Ok(())
    }

    /// Handles one expectation; false if it ended in an ErrorResponse.
    async fn handle(&mut self, exp: Expect) -> Result<bool, End> {
        tracing::trace!(expect = exp.name(), "mediator: waiting");
        match exp {
            Expect::Relay => {
                let f = self.response().await?;
                if f.tag() == b'E' {
                    self.relay_error(&f);
                    return Ok(false);
                }
                self.out.put_slice(f.raw());
            }
            Expect::Swallow => {
                let f = self.response().await?;
                if f.tag() == b'E' {
                    self.swallowed_error = decode_error(&f);
                    return Ok(false);
                }
            }
            Expect::Describe { statement, strip } => {
                let mut f = self.response().await?;
                if statement {
                    if f.tag() == b'E' {
                        self.relay_error(&f);
                        return Ok(false);
                    }
                    self.out.put_slice(f.raw());
                    f = self.response().await?;
                }
                match f.tag() {
                    b'E' => {
                        self.relay_error(&f);
                        return Ok(false);
                    }
                    b'T' if strip => {
                        let left = strip_row_description(
                            &f.raw()[Frame::HEADER..],
                            EXTRA_COLUMNS,
                            &mut self.out,
                        )
                        .map_err(proto)?;
                        if left == 0 {
                            self.out.put_slice(b"n\0\0\0\x04");
                        }
                    }
                    _ => self.out.put_slice(f.raw()),
                }
            }
            Expect::Results {
                mut capture,
                sink,
                until_ready,
            } => loop {
                let f = self.response().await?;
                match f.tag() {
                    b'T' => {
                        if let Some(run) = &capture {
                            let mut scratch = BytesMut::new();
                            let target = if sink == Sink::Swallow {
                                &mut scratch
                            } else {
                                &mut self.out
                            };
                            if run.client_returning {
                                strip_row_description(
                                    &f.raw()[Frame::HEADER..],
                                    EXTRA_COLUMNS,
                                    target,
                                )
                                .map_err(proto)?;
                            }
                        } else if sink != Sink::Swallow {
                            self.out.put_slice(f.raw());
                        }
                    }
                    b'D' => {
                        if let Some(run) = capture.as_mut() {
                            self.capture_row(run, &f).await?;
                        } else if sink == Sink::Swallow {
                            let body = &f.raw()[Frame::HEADER..];
                            let n = body
                                .get(..2)
                                .map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
                                .unwrap_or(0);
                            let v = split_data_row(body, n, None).map_err(proto)?;
                            self.injected_values = v
                                .iter()
                                .map(|x| x.map(|b| String::from_utf8_lossy(b).into_owned()))
                                .collect();
                        } else {
                            self.out.put_slice(f.raw());
                        }
                    }
                    b'C' | b'I' => {
                        if let Some(run) = capture.as_mut() {
                            self.finish_capture(run).await;
                        }
                        if f.tag() == b'C' {
                            let body = &f.raw()[Frame::HEADER..];
                            let tag = body.strip_suffix(&[0]).unwrap_or(body);
                            self.last_tag = String::from_utf8_lossy(tag).into_owned();
                        }
                        match sink {
                            Sink::Client => self.out.put_slice(f.raw()),
                            Sink::HoldComplete => self.held.push(f.into_raw()),
                            Sink::Swallow => {}
                        }
                        capture = None;
                        if !until_ready {
                            return Ok(true);
                        }
                    }
                    b's' => {
                        self.out.put_slice(f.raw());
                        return Ok(true);
                    }
                    b'E' => {
                        if sink == Sink::Swallow {
                            self.swallowed_error = decode_error(&f);
                        } else {
                            self.relay_error(&f);
                        }
                        return Ok(false);
                    }
                    b'Z' if until_ready => {
                        self.pushback = Some(f);
                        return Ok(true);
                    }
                    _ => {
                        if sink != Sink::Swallow {
                            self.out.put_slice(f.raw());
                        }
                    }
                }
            },
            Expect::Ready { forward } => {
                let f = self.response().await?;
                if f.tag() != b'Z' {
                    return Err(io_err("the old database answered out of order"));
                }
                self.status = f.raw().get(Frame::HEADER).copied().unwrap_or(b'I');
                if forward {
                    self.out.put_slice(f.raw());
                }
            }
        }
        Ok(true)
    }

    async fn capture_row(&mut self, run: &mut CaptureRun, f: &Frame) -> Result<(), End> {
        let body = &f.raw()[Frame::HEADER..];
        let client = if run.client_returning {
            Some(&mut self.out)
        } else {
            None
        };
        let values = split_data_row(body, EXTRA_COLUMNS, client).map_err(proto)?;
        let oid = match values[0] {
            Some(b) if run.extra_binary && b.len() == 4 => {
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
            Some(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            None => 0,
        };
        if self.ms.txn.xid.is_none() {
            if let Some(x) = values[1] {
                self.ms.txn.xid = Some(String::from_utf8_lossy(x).into_owned());
            }
        }
        let Some(image) = values[2] else {
            return Ok(());
        };
        let image = String::from_utf8_lossy(image).into_owned();
        run.rows += 1;
        if !run.looked_up || run.oid != oid {
            self.flush_batch(run).await;
            run.table = None;
            run.oid = oid;
            run.looked_up = true;
            match self
                .ms
                .mirror
                .catalog
                .table(&self.ms.mirror.control, oid)
                .await
            {
                Ok(Some(t)) => {
                    if run.kind == DmlKind::Update
                        && run
                            .updated_columns
                            .iter()
                            .any(|c| t.primary_key.contains(c))
                    {
                        self.ms
                            .queue_table(&t.name, "UPDATE of primary-key columns");
                    }
                    run.table = Some(t);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "Cannot look up a written table; the transaction will fail rather than commit unrecorded.");
                    self.ms.txn.fatal = Some(e.to_string());
                    return Ok(());
                }
            }
        }
        let Some(table) = run.table.clone() else {
            // Not visible to the proxy's own connection yet: resolved after this request.
            if self.deferred.len() < MAX_DEFERRED {
                self.deferred.push(Deferred {
                    kind: run.kind,
                    updated_columns: run.updated_columns.clone(),
                    original_sql: run.original_sql.clone(),
                    oid,
                    image,
                });
            } else if !self.overflowed.contains(&oid) {
                self.overflowed.push(oid);
            }
            return Ok(());
        };
        self.add_image(run, &table, image).await;
        Ok(())
    }

    async fn add_image(&mut self, run: &mut CaptureRun, table: &Arc<TableInfo>, image: String) {
        if table.temporary {
            return;
        }
        if !table.has_key() {
            if run.kind == DmlKind::Insert {
                // Inserted rows need no key: their images are inserted as they are.
                run.images
                    .push(if run.images.is_empty() { '[' } else { ',' });
                run.images.push_str(&image);
                run.pending += 1;
                if run.pending >= self.ms.mirror.config.batch_rows as u64 {
                    self.flush_batch(run).await;
                }
            } else if !run.no_key_tables.contains(&table.name) {
                run.no_key_tables.push(table.name.clone());
            }
            return;
        }
        let key = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&image) {
            Ok(map) => serde_json::Value::Object(
                table
                    .primary_key
                    .iter()
                    .map(|c| {
                        (
                            c.clone(),
                            map.get(c).cloned().unwrap_or(serde_json::Value::Null),
                        )
                    })
                    .collect(),
            ),
            Err(e) => {
                self.ms
                    .queue_table(&table.name, &format!("row image not readable: {e}"));
                return;
            }
        };
        run.images
            .push(if run.images.is_empty() { '[' } else { ',' });
        run.images.push_str(&image);
        run.keys.push(key.to_string());
        run.pending += 1;
        if run.pending >= self.ms.mirror.config.batch_rows as u64 {
            self.flush_batch(run).await;
        }
    }

    async fn flush_batch(&mut self, run: &mut CaptureRun) {
        if run.pending == 0 {
            return;
        }
        let n = std::mem::take(&mut run.pending);
        let Some(table) = run.table.clone() else {
            return;
        };
        run.images.push(']');
        let images = std::mem::take(&mut run.images);
        let keys = std::mem::take(&mut run.keys);
        self.ms.apply(&table, run.kind, &images, keys, n).await;
    }

    async fn finish_capture(&mut self, run: &mut CaptureRun) {
        self.flush_batch(run).await;
        self.ms
            .mirror
            .status
            .statements_captured
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for table in std::mem::take(&mut run.no_key_tables) {
            match run.original_sql.clone() {
                Some(sql) => {
                    self.count_mode(&sql, "table without a primary key", true);
                    let queued = self.statements_queued().await;
                    self.ms.statement(&sql, queued).await;
                }
                None => {
                    self.count_mode(
                        &table,
                        "table without a primary key (extended protocol)",
                        false,
                    );
                    self.ms.queue_table(&table, "table without a primary key");
                }
            }
        }
    }

    /// Whether statement-mode records wait in the retry log: later statements must queue
    /// behind them to keep their order.
    async fn statements_queued(&mut self) -> bool {
        let Ok(c) = self.ms.mirror.control.client().await else {
            return false;
        };
        c.query_one(
            "SELECT EXISTS (SELECT 1 FROM _switchyard.retry_log WHERE kind = 'statement' AND NOT dead)",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    }

    /// Runs a statement of the proxy's own on the primary through a named statement and
    /// portal (so the client's unnamed ones survive). Returns false if it failed; the error
    /// is in `swallowed_error`.
    async fn inject(&mut self, sql: &str) -> Result<bool, End> {
        self.swallowed_error = None;
        self.injected_values.clear();
        for msg in [
            FrontendMessage::Close {
                target: Target::Statement,
                name: OWN.into(),
            },
            FrontendMessage::Parse {
                name: OWN.into(),
                query: sql.into(),
                param_types: Vec::new(),
            },
            FrontendMessage::Bind(crate::protocol::frontend::Bind {
                portal: OWN.into(),
                statement: OWN.into(),
                param_formats: Vec::new(),
                params: Vec::new(),
                result_formats: Vec::new(),
            }),
            FrontendMessage::Execute {
                portal: OWN.into(),
                max_rows: 0,
            },
            FrontendMessage::Close {
                target: Target::Portal,
                name: OWN.into(),
            },
            FrontendMessage::Flush,
        ] {
            self.send_msg(&msg);
        }
        for _ in 0..3 {
            self.expect.push_back(Expect::Swallow);
        }
        self.expect.push_back(Expect::Results {
            capture: None,
            sink: Sink::Swallow,
            until_ready: false,
        });
        self.expect.push_back(Expect::Swallow);
        let error_before = self.error_seen;
        self.settle().await?;
        self.error_seen = error_before;
        if self.swallowed_error.is_some() {
            return Ok(false);
        }
        Ok(true)
    }

    async fn fetch_xid(&mut self) -> Result<(), End> {
        if self.inject("SELECT pg_current_xact_id()::text").await? {
            self.ms.txn.xid = self.injected_values.first().cloned().flatten();
        }
        Ok(())
    }

    // --- simple protocol -----------------------------------------------------------------

    async fn query(&mut self, frame: Frame) -> Result<(), End> {
        let body = &frame.raw()[Frame::HEADER..];
        let sql = std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body))
            .map_err(|_| End::ClientProtocol(ProtocolError::malformed("Query", "invalid UTF-8")))?;
        let sql = self.up.as_server_reads(sql).into_owned();
        self.up.note_query(&sql);
        let plan = self.ms.mirror.plan(&sql);
        self.ready_sent = false;
        if let Plan::Multi(pieces) = &*plan {
            // One implicit transaction for the whole string, unless it manages its own.
            let group = self.status == b'I'
                && !pieces
                    .iter()
                    .any(|p| matches!(*self.ms.mirror.plan(p), Plan::Txn(_) | Plan::Multi(_)));
            if group {
                self.begin_simple();
                self.settle().await?;
            }
            for piece in pieces {
                let raw = query_frame(piece);
                let p = self.ms.mirror.plan(piece);
                self.one_query(&raw, piece, &p).await?;
                if self.error_seen || self.ready_sent {
                    break;
                }
            }
            if group {
                self.finish_implicit().await?;
            }
        } else {
            self.one_query(frame.raw(), &sql, &plan).await?;
        }
        if !self.ready_sent {
            ready(&mut self.out, self.status);
        }
        Ok(())
    }

    /// One statement of a Query; the ReadyForQuery is left to the caller.
    async fn one_query(&mut self, raw: &[u8], sql: &str, plan: &Arc<Plan>) -> Result<(), End> {
        match &**plan {
            Plan::Capture(c) => {
                let implicit = self.status == b'I';
                if implicit {
                    self.begin_simple();
                }
                self.send_msg(&FrontendMessage::Query(c.sql.clone()));
                self.expect_query(CaptureRun::new(plan, false, Some(sql.to_string())));
                self.settle().await?;
                if implicit {
                    self.finish_implicit().await?;
                }
            }
            Plan::Statement { reason, ddl } => {
                let implicit = self.status == b'I';
                if implicit {
                    self.begin_simple();
                }
                self.send(raw);
                self.expect_query(None);
                self.settle().await?;
                if !self.error_seen && self.status != b'E' {
                    self.statement_mode(sql, reason, *ddl).await?;
                }
                if implicit {
                    self.finish_implicit().await?;
                }
            }
            Plan::CopyIn { relation } => self.copy_in(raw, sql, relation).await?,
            Plan::Rejected => {
                error_response(&mut self.out, &rejected());
                self.error_seen = true;
                if self.status != b'I' {
                    // The server must agree that the transaction failed.
                    self.send_msg(&FrontendMessage::Query("SELECT 1/0".into()));
                    self.expect.push_back(Expect::Results {
                        capture: None,
                        sink: Sink::Swallow,
                        until_ready: true,
                    });
                    self.expect.push_back(Expect::Ready { forward: false });
                    self.settle().await?;
                }
            }
            Plan::Txn(op) => {
                let frame = Frame::from_encoded(Bytes::copy_from_slice(raw));
                self.txn_op(op.clone(), frame, true).await?
            }
            Plan::Unmirrored { reason } | Plan::PassUnmirrored { reason } => {
                self.count_mode(sql, reason, false);
                self.pass_query(raw).await?;
            }
            Plan::Pass | Plan::Multi(_) => self.pass_query(raw).await?,
        }
        Ok(())
    }

    /// COPY ... FROM STDIN: relays the data to the primary, keeps it (up to
    /// `COPY_KEEP_MAX` bytes), and once the primary took it feeds it to the secondary.
    async fn copy_in(&mut self, raw: &[u8], sql: &str, relation: &str) -> Result<(), End> {
        let implicit = self.status == b'I';
        if implicit {
            self.begin_simple();
            self.settle().await?;
        }
        self.send(raw);
        let first = self.response().await?;
        if first.tag() != b'G' {
            // An error (or no COPY at all): the rest is an ordinary result.
            self.pushback = Some(first);
            self.expect.push_back(Expect::Results {
                capture: None,
                sink: Sink::Client,
                until_ready: true,
            });
            self.expect.push_back(Expect::Ready { forward: false });
            self.settle().await?;
        } else {
            self.out.put_slice(first.raw());
            self.flush_client().await?;
            let mut data = Some(Vec::new());
            let mut kept = 0usize;
            loop {
                let f = self.client_frame().await?;
                self.send(f.raw());
                match f.tag() {
                    b'd' => {
                        kept += f.raw().len();
                        if kept > COPY_KEEP_MAX {
                            data = None;
                        } else if let Some(d) = data.as_mut() {
                            d.push(f.raw().slice(Frame::HEADER..));
                        }
                        if self.to_primary.len() > 256 * 1024 {
                            self.flush_primary().await?;
                        }
                    }
                    b'c' | b'f' => break,
                    // Flush and Sync are ignored by the server during COPY.
                    b'H' | b'S' => {}
                    _ => break,
                }
            }
            self.expect_query(None);
            self.settle().await?;
            if !self.error_seen && self.status != b'E' {
                let lookup = format!(
                    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {relation}"
                );
                let table = if self.inject(&lookup).await? {
                    self.injected_values.first().cloned().flatten()
                } else {
                    None
                };
                match table {
                    Some(t) => {
                        self.count_mode(sql, "COPY FROM", true);
                        let pin = self.pin_search_path("").await?;
                        self.ms.copy(sql, data, &t, pin.trim_end_matches(' ')).await;
                    }
                    None => self.ms.txn.fatal = Some(format!("cannot name the table of {sql:?}")),
                }
            }
        }
        if implicit {
            self.finish_implicit().await?;
        }
        Ok(())
    }

    /// BEGIN in front of an implicit transaction the proxy must be able to prepare.
    fn begin_simple(&mut self) {
        self.send_msg(&FrontendMessage::Query("BEGIN".into()));
        self.expect.push_back(Expect::Swallow);
        self.expect.push_back(Expect::Ready { forward: false });
        self.begun_here = true;
    }

    /// The results of a Query through its ReadyForQuery (which the caller answers);
    /// CommandComplete waits for the proxy's own commit when the proxy began the transaction.
    fn expect_query(&mut self, capture: Option<Box<CaptureRun>>) {
        self.expect.push_back(Expect::Results {
            capture,
            sink: if self.begun_here {
                Sink::HoldComplete
            } else {
                Sink::Client
            },
            until_ready: true,
        });
        self.expect.push_back(Expect::Ready { forward: false });
    }

    /// The results of one Execute, for the client.
    fn expect_execute(&mut self, capture: Option<Box<CaptureRun>>) {
        self.expect.push_back(Expect::Results {
            capture,
            sink: Sink::Client,
            until_ready: false,
        });
    }

    /// Counts a statement mirrored as text (or not at all), by its fingerprint.
    fn count_mode(&self, sql: &str, reason: &str, mirrored: bool) {
        let (classes, _) = self.up.shared.classifier.classify(sql);
        let fingerprint = classes
            .first()
            .map(|c| c.fingerprint)
            .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(sql.as_bytes()));
        self.ms
            .mirror
            .status
            .statement_mode(fingerprint, reason, mirrored, sql);
    }

    async fn pass_query(&mut self, raw: &[u8]) -> Result<(), End> {
        self.send(raw);
        self.expect_query(None);
        self.settle().await
    }

    async fn statement_mode(&mut self, sql: &str, reason: &str, ddl: bool) -> Result<(), End> {
        self.count_mode(sql, reason, true);
        let pinned = self.pin_search_path(sql).await?;
        let queued = self.statements_queued().await;
        self.ms.statement(&pinned, queued).await;
        if ddl {
            self.ms.mirror.catalog.invalidate();
        }
        Ok(())
    }

    /// The client session's search_path, set locally in front of `sql`: statement text
    /// names objects as the client's session resolves them, on the secondary and on replay.
    async fn pin_search_path(&mut self, sql: &str) -> Result<String, End> {
        let path = if self
            .inject("SELECT pg_catalog.current_setting('search_path')")
            .await?
        {
            self.injected_values.first().cloned().flatten()
        } else {
            None
        };
        Ok(match path {
            Some(p) => {
                let mut tag = String::from("sp");
                while p.contains(&format!("${tag}$")) {
                    tag.push('x');
                }
                format!(
                    "SELECT pg_catalog.set_config('search_path', ${tag}${p}${tag}$, true); {sql}"
                )
            }
            None => sql.to_string(),
        })
    }

    /// Ends a transaction the proxy opened around an implicit one.
    async fn finish_implicit(&mut self) -> Result<(), End> {
        self.begun_here = false;
        if self.error_seen || self.status == b'E' {
            self.inject("ROLLBACK").await?;
            self.ms.finish(false).await;
            self.held.clear();
            self.status = b'I';
            ready(&mut self.out, b'I');
            self.ready_sent = true;
            return Ok(());
        }
        self.commit(CommitHow::Injected).await
    }

    // --- transaction control ---------------------------------------------------------------

    async fn txn_op(&mut self, op: TxnOp, frame: Frame, simple: bool) -> Result<(), End> {
        if let TxnOp::Commit = op {
            if self.status != b'E' && (self.ms.txn.touched() || self.ms.txn.fatal.is_some()) {
                return self.commit(CommitHow::Client { frame, simple }).await;
            }
        }
        if let TxnOp::TwoPhase = op {
            if self.ms.txn.touched() {
                // The client's own two-phase commit: the secondary work is dropped and its
                // keys are recorded in the client's transaction, committed with it.
                self.ms.abandon("the client used PREPARE TRANSACTION");
                if !self.write_records().await? {
                    return self.fail_commit(simple).await;
                }
            }
        }
        if !simple
            && matches!(
                op,
                TxnOp::Begin
                    | TxnOp::Savepoint(_)
                    | TxnOp::Release(_)
                    | TxnOp::RollbackTo(_)
                    | TxnOp::Rollback
            )
        {
            // Extended protocol: the result comes with the batch's Sync; these cannot fail
            // in a way that matters to the secondary (a failed transaction is rolled back
            // whole), so the secondary follows at once.
            self.send(frame.raw());
            self.expect_execute(None);
            match op {
                TxnOp::Begin => self.status = b'T',
                TxnOp::Savepoint(n) if self.status != b'E' => self.ms.savepoint(&n).await,
                TxnOp::Release(n) if self.status != b'E' => self.ms.release(&n).await,
                TxnOp::RollbackTo(n) => {
                    self.ms.rollback_to(&n).await;
                    self.status = b'T';
                }
                TxnOp::Rollback => {
                    self.ms.finish(false).await;
                    self.status = b'I';
                }
                _ => {}
            }
            return Ok(());
        }
        self.forward_client(&frame, simple).await?;
        let ok = !self.error_seen;
        match op {
            TxnOp::Begin if ok && !simple => self.status = b'T',
            TxnOp::Commit | TxnOp::Rollback | TxnOp::TwoPhase => {
                let committed = ok && self.last_tag == "COMMIT";
                self.ms.finish(committed).await;
                if ok && !simple {
                    self.status = b'I';
                }
            }
            TxnOp::Savepoint(n) if ok => self.ms.savepoint(&n).await,
            TxnOp::Release(n) if ok => self.ms.release(&n).await,
            TxnOp::RollbackTo(n) if ok => {
                self.ms.rollback_to(&n).await;
                if !simple {
                    self.status = b'T';
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn forward_client(&mut self, frame: &Frame, simple: bool) -> Result<(), End> {
        self.send(frame.raw());
        self.expect.push_back(Expect::Results {
            capture: None,
            sink: Sink::Client,
            until_ready: simple,
        });
        if simple {
            self.expect.push_back(Expect::Ready { forward: false });
        }
        self.settle().await
    }

    /// Records the transaction's re-sync orders: to Kafka (confirmed before the commit) when
    /// that is the backend, else or on fallback into the embedded table in this transaction.
    async fn write_records(&mut self) -> Result<bool, End> {
        let records = self.ms.records();
        let mirror = self.ms.mirror.clone();
        let embedded = match crate::mirror::retry_kafka::route_records(
            mirror.kafka.as_ref(),
            &mirror.status,
            records,
        )
        .await
        {
            Ok(e) => e,
            Err(detail) => {
                self.swallowed_error = None;
                self.ms.txn.fatal = Some(detail);
                return Ok(false);
            }
        };
        if embedded.is_empty() {
            return Ok(true);
        }
        let Ok(sql) = switchyard_core::retry::embedded_insert_sql(&embedded) else {
            return Ok(false);
        };
        if !self.inject(&sql).await? {
            tracing::error!(
                error = ?self.swallowed_error.as_ref().map(|e| e.message().to_string()),
                "Writing the retry log on the old database failed."
            );
            return Ok(false);
        }
        let n = embedded.len() as u64;
        mirror
            .status
            .records_embedded
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(MIRROR_RETRY_RECORDS_TOTAL, "backend" => "embedded").increment(n);
        Ok(true)
    }

    /// The transaction cannot commit safely: roll it back and say why.
    async fn fail_commit(&mut self, simple: bool) -> Result<(), End> {
        let detail = self
            .swallowed_error
            .take()
            .map(|e| e.message().to_string())
            .or_else(|| self.ms.txn.fatal.clone())
            .unwrap_or_default();
        self.inject("ROLLBACK").await?;
        self.ms.finish(false).await;
        self.held.clear();
        self.ms
            .mirror
            .status
            .commits_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(crate::metrics::MIRROR_COMMITS_REFUSED_TOTAL).increment(1);
        let fields = ErrorFields::new(
            "ERROR",
            "XX000",
            "switchyard: the new database did not take this transaction's changes and they could not be recorded in the retry log; the transaction was rolled back",
        )
        .with(b'D', detail);
        error_response(&mut self.out, &fields);
        self.error_seen = true;
        self.status = b'I';
        if simple {
            ready(&mut self.out, b'I');
            self.ready_sent = true;
        } else {
            self.failed = true;
        }
        Ok(())
    }

    /// PREPARE on the secondary (or records in the primary's transaction), COMMIT on the
    /// primary, then COMMIT PREPARED.
    async fn commit(&mut self, how: CommitHow) -> Result<(), End> {
        let simple = match &how {
            CommitHow::Injected => true,
            CommitHow::Client { simple, .. } => *simple,
        };
        if self.ms.txn.fatal.is_some() {
            return self.fail_commit(simple).await;
        }
        if self.ms.txn.open && self.ms.txn.xid.is_none() {
            self.fetch_xid().await?;
        }
        self.ms.prepare().await;
        if self.ms.txn.needs_records() && !self.write_records().await? {
            return self.fail_commit(simple).await;
        }
        failpoint("after-prepare");
        let injected = matches!(how, CommitHow::Injected);
        let committed = match how {
            CommitHow::Injected => {
                let ok = self.inject("COMMIT").await?;
                if !ok {
                    if let Some(e) = self.swallowed_error.take() {
                        error_response(&mut self.out, &e);
                    }
                }
                ok
            }
            CommitHow::Client { frame, simple } => {
                self.forward_client(&frame, simple).await?;
                !self.error_seen && self.last_tag == "COMMIT"
            }
        };
        failpoint("after-primary-commit");
        self.ms.finish(committed).await;
        if injected {
            if committed {
                for c in std::mem::take(&mut self.held) {
                    self.out.put_slice(&c);
                }
            }
            self.held.clear();
            ready(&mut self.out, b'I');
            self.ready_sent = true;
        }
        if !simple || injected {
            self.status = b'I';
        }
        Ok(())
    }

    // --- extended protocol -------------------------------------------------------------------

    async fn extended(&mut self, frame: Frame) -> Result<(), End> {
        let msg = FrontendMessage::decode(&frame).map_err(End::ClientProtocol)?;
        match msg {
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            } => {
                let query = self.up.as_server_reads(&query).into_owned();
                self.up.note_parse(&name, &query);
                let plan = self.ms.mirror.plan(&query);
                if let Plan::Capture(c) = &*plan {
                    self.send_msg(&FrontendMessage::Parse {
                        name: name.clone(),
                        query: c.sql.clone(),
                        param_types,
                    });
                } else {
                    self.send(frame.raw());
                }
                if plan.needs_mediation() {
                    self.up
                        .plans
                        .insert(name, (plan, Arc::from(query.as_str())));
                } else {
                    self.up.plans.remove(&name);
                }
                self.expect.push_back(Expect::Relay);
            }
            FrontendMessage::Bind(mut b) => {
                self.up.note_bind(&frame);
                match self.up.plans.get(&b.statement).cloned() {
                    Some((plan, sql)) => {
                        let mut extra_binary = false;
                        if let Plan::Capture(_) = &*plan {
                            match b.result_formats.len() {
                                0 => {}
                                1 => extra_binary = b.result_formats[0] == 1,
                                _ => {
                                    let mut f = vec![0i16; EXTRA_COLUMNS];
                                    f.extend_from_slice(&b.result_formats);
                                    b.result_formats = f;
                                }
                            }
                        }
                        let has_params = !b.params.is_empty();
                        let portal = b.portal.clone();
                        self.send_msg(&FrontendMessage::Bind(b));
                        self.up.portal_plans.insert(
                            portal,
                            super::session::MediatedPortal {
                                plan,
                                sql,
                                extra_binary,
                                has_params,
                            },
                        );
                    }
                    None => {
                        self.up.portal_plans.remove(&b.portal);
                        self.send(frame.raw());
                    }
                }
                self.expect.push_back(Expect::Relay);
            }
            FrontendMessage::Describe { target, name } => {
                let strip = match target {
                    Target::Statement => self
                        .up
                        .plans
                        .get(&name)
                        .is_some_and(|(p, _)| matches!(**p, Plan::Capture(_))),
                    Target::Portal => self
                        .up
                        .portal_plans
                        .get(&name)
                        .is_some_and(|p| matches!(*p.plan, Plan::Capture(_))),
                };
                self.send(frame.raw());
                self.expect.push_back(Expect::Describe {
                    statement: target == Target::Statement,
                    strip,
                });
            }
            FrontendMessage::Execute { portal, max_rows } => {
                self.execute(frame, portal, max_rows).await?
            }
            FrontendMessage::Close { target, name } => {
                match target {
                    Target::Statement => self.up.plans.remove(&name),
                    Target::Portal => {
                        self.up.portal_plans.remove(&name);
                        None
                    }
                };
                self.up.note_close(&frame);
                self.send(frame.raw());
                self.expect.push_back(Expect::Relay);
            }
            FrontendMessage::Flush => {
                self.send(frame.raw());
                self.settle().await?;
                self.flush_all().await?;
            }
            _ => {
                // FunctionCall and copy messages do not belong in a batch the proxy mediates;
                // pass them on and let the server judge.
                self.send(frame.raw());
            }
        }
        Ok(())
    }

    async fn execute(&mut self, frame: Frame, portal: String, max_rows: i32) -> Result<(), End> {
        let Some(p) = self.up.portal_plans.get(&portal).cloned() else {
            self.send(frame.raw());
            self.expect_execute(None);
            return Ok(());
        };
        self.up.note_execute(&frame);
        match &*p.plan {
            Plan::Capture(_) => {
                self.ensure_transaction().await?;
                if self.failed {
                    return Ok(());
                }
                // A row limit would split the RETURNING rows; the statement runs to the end
                // on the first Execute anyway, so the proxy asks for all rows at once.
                let _ = max_rows;
                self.send_msg(&FrontendMessage::Execute {
                    portal,
                    max_rows: 0,
                });
                self.expect_execute(CaptureRun::new(&p.plan, p.extra_binary, None));
            }
            Plan::Statement { reason, ddl } => {
                self.ensure_transaction().await?;
                if self.failed {
                    return Ok(());
                }
                self.send(frame.raw());
                self.expect_execute(None);
                self.settle().await?;
                if !self.failed {
                    if p.has_params {
                        self.count_mode(
                            &p.sql,
                            "statement with parameters (extended protocol): tables re-synced",
                            false,
                        );
                        self.queue_written_tables(&p.sql.clone()).await?;
                    } else {
                        self.statement_mode(&p.sql.clone(), reason, *ddl).await?;
                    }
                }
            }
            Plan::Rejected => {
                self.settle().await?;
                error_response(&mut self.out, &rejected());
                self.failed = true;
            }
            Plan::Txn(op) => {
                // Only a commit must know how the statements before it ended.
                if matches!(op, TxnOp::Commit | TxnOp::TwoPhase) {
                    self.settle().await?;
                }
                if !self.failed {
                    self.txn_op(op.clone(), frame, false).await?;
                }
            }
            Plan::Unmirrored { reason } => {
                self.count_mode(&p.sql, reason, false);
                self.send(frame.raw());
                self.expect_execute(None);
            }
            Plan::Pass | Plan::PassUnmirrored { .. } | Plan::Multi(_) | Plan::CopyIn { .. } => {
                self.send(frame.raw());
                self.expect_execute(None);
            }
        }
        Ok(())
    }

    /// A statement that cannot be mirrored as text (its parameters were bound on the primary
    /// only): every table it writes gets a table record, re-synced whole by replay, so the
    /// write is not lost. Names are resolved on the primary with the session's search_path
    /// (`to_regclass`, which cannot fail the client's transaction).
    async fn queue_written_tables(&mut self, sql: &str) -> Result<(), End> {
        let tables = crate::mirror::rewrite::written_tables(sql);
        if tables.is_empty() {
            tracing::warn!("A statement with parameters could not be mirrored and its tables are unknown; verify will show the difference.");
        }
        for t in tables {
            let lookup = format!(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass({})",
                switchyard_core::ident::quote_literal(&t)
            );
            if !self.inject(&lookup).await? {
                break;
            }
            match (self.injected_values.first(), self.injected_values.get(1)) {
                (Some(Some(schema)), Some(Some(name))) => {
                    let name = format!(
                        "{}.{}",
                        crate::mirror::rewrite::quote_ident(schema),
                        crate::mirror::rewrite::quote_ident(name)
                    );
                    self.ms
                        .queue_table(&name, "statement with parameters (extended protocol)");
                }
                _ => {
                    tracing::warn!(table = %t, "A table written by an unmirrored statement was not found; verify will show any difference.")
                }
            }
        }
        Ok(())
    }

    /// Opens a transaction around an implicit one, so the secondary can be prepared before
    /// the primary commits.
    async fn ensure_transaction(&mut self) -> Result<(), End> {
        // Inside a transaction nothing needs waiting for: the statement just follows.
        if self.failed || self.status != b'I' {
            return Ok(());
        }
        self.settle().await?;
        if self.failed || self.status != b'I' {
            return Ok(());
        }
        if self.inject("BEGIN").await? {
            self.status = b'T';
            self.begun_here = true;
        }
        Ok(())
    }

    async fn sync(&mut self, frame: Frame) -> Result<(), End> {
        self.send(frame.raw());
        self.expect.push_back(Expect::Ready {
            forward: !self.begun_here,
        });
        self.settle().await?;
        if self.begun_here {
            self.finish_implicit().await?;
        }
        self.failed = false;
        Ok(())
    }
}

fn query_frame(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    FrontendMessage::Query(sql.to_string()).encode(&mut b);
    b.to_vec()
}

fn rejected() -> ErrorFields {
    ErrorFields::new(
        "ERROR",
        "0A000",
        "switchyard: DDL is rejected while the database is being migrated (mirror.ddl = \"reject\")",
    )
}

fn decode_error(f: &Frame) -> Option<ErrorFields> {
    match crate::protocol::backend::BackendMessage::decode(f) {
        Ok(crate::protocol::backend::BackendMessage::ErrorResponse(e)) => Some(e),
        _ => Some(ErrorFields::new("ERROR", "XX000", "unreadable error")),
    }
}

/// Test hook: `SWITCHYARD_FAILPOINT=after-prepare|after-primary-commit` kills the process at
/// that step of a commit, so tests can prove recovery from a crash there.
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("SWITCHYARD_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        eprintln!("switchyard: failpoint {name} reached; aborting");
        std::process::abort();
    }
}
