//! One client session after startup: two pumps, client→primary and primary→client, running
//! concurrently so neither side can stall the other (a server blocked writing results must
//! still be read while the client keeps sending). Each pump forwards whole messages in the
//! batches they arrived in, one write per read, and looks only at the messages it must:
//! statements to classify, transaction status, errors, and the end of each request.

use super::reply::{fatal, send_error};
use super::stream::ClientStream;
use crate::backend::BackendConn;
use crate::classify::{Classified, StatementClass};
use crate::metrics::{PROTOCOL_ERRORS_TOTAL, SERVER_ERRORS_TOTAL, STATEMENTS_UNPARSED_TOTAL};
use crate::mirror::rewrite::Plan;
use crate::mirror::txn::MirrorSession;
use crate::protocol::frontend::{bind_names, execute_portal, is_known_tag};
use crate::protocol::{Frame, ProtocolError};
use crate::shadow::ShadowTap;
use crate::shared::Shared;
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Read buffers start small, so thousands of idle sessions stay cheap, and grow while reads
/// keep filling them (large results, COPY), up to `MAX_READ_CHUNK`.
const MIN_READ_CHUNK: usize = 4 * 1024;
const MAX_READ_CHUNK: usize = 256 * 1024;
/// Largest unfinished extended-protocol batch held back while mirroring; beyond it the
/// batch is forwarded as it comes.
const HOLD_LIMIT: usize = 1 << 20;

/// Makes room for the next read: `chunk` free bytes, doubled after a read that filled the
/// buffer and reset to the minimum after one that did not.
fn make_room(buf: &mut BytesMut, chunk: &mut usize, last_read: usize) {
    if last_read >= *chunk {
        *chunk = (*chunk * 2).min(MAX_READ_CHUNK);
    } else if last_read < *chunk / 4 {
        *chunk = MIN_READ_CHUNK;
    }
    if buf.capacity() - buf.len() < *chunk / 2 {
        buf.reserve(*chunk);
    }
}

/// What both pumps need to see: requests awaiting their ReadyForQuery, and the transaction
/// status the server last reported.
struct Flow {
    pending: VecDeque<(Instant, Option<StatementClass>)>,
    txn_status: u8,
}

/// Wakes the upstream pump when the session turns idle, so an idle timeout or a pending
/// shutdown is re-armed without waiting for the client's next message.
type IdleSignal = tokio::sync::Notify;

impl Flow {
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.txn_status == b'I'
    }
}

/// Why a session ended (or, for `Mediate`, why the pumps paused).
#[derive(Debug)]
pub(super) enum End {
    /// A request needs dual-write handling; both pumps are quiet.
    Mediate,
    ClientClosed,
    ClientTerminated,
    ServerClosed,
    IdleTimeout,
    Shutdown,
    ClientProtocol(ProtocolError),
    /// The session mirrors and its client encoding left UTF8 (`SET client_encoding`).
    ClientEncoding(String),
    Io(&'static str, std::io::Error),
}

pub struct Session {
    shared: Arc<Shared>,
    client: ClientStream,
    client_buf: BytesMut,
    backend: BackendConn,
    peer: SocketAddr,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        client: ClientStream,
        client_buf: BytesMut,
        backend: BackendConn,
        peer: SocketAddr,
    ) -> Self {
        Session {
            shared,
            client,
            client_buf,
            backend,
            peer,
        }
    }

    pub async fn run(self) {
        let Session {
            shared,
            client,
            client_buf,
            backend,
            peer,
        } = self;
        // Plain TCP splits into owned halves without a lock; TLS needs the shared split.
        match client {
            ClientStream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                pump(shared, r, w, client_buf, backend, peer).await
            }
            ClientStream::Tls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                // Boxed: a second instance of the pump's state would otherwise size every
                // session's task, TLS or not.
                Box::pin(pump(shared, r, w, client_buf, backend, peer)).await
            }
        }
    }
}

/// Runs both directions until either ends, then closes the session cleanly.
async fn pump<R, W>(
    shared: Arc<Shared>,
    client_r: R,
    client_w: W,
    client_buf: BytesMut,
    backend: BackendConn,
    peer: SocketAddr,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let flow = Mutex::new(Flow {
        pending: VecDeque::new(),
        txn_status: b'I',
    });
    let became_idle = IdleSignal::new();
    let drained = tokio::sync::Notify::new();
    let writing = AtomicBool::new(false);
    let conforming_strings = AtomicBool::new(
        !backend
            .params
            .iter()
            .any(|(k, v)| k == "standard_conforming_strings" && v == "off"),
    );
    let server_utf8 = backend
        .params
        .iter()
        .any(|(k, v)| k == "server_encoding" && is_utf8_encoding(v.as_bytes()));
    let mirror = shared.mirror.clone();
    let mut mirror_session = mirror.clone().map(MirrorSession::new);
    let shadow = shared
        .shadow
        .clone()
        .map(|s| ShadowTap::new(s, &backend.params));
    let (server_r, server_w) = backend.stream.into_split();
    let mut up = Upstream {
        shared: &shared,
        flow: &flow,
        became_idle: &became_idle,
        client: client_r,
        buf: client_buf,
        server: server_w,
        statements: HashMap::new(),
        portals: HashMap::new(),
        batch_class: None,
        mirror,
        plans: HashMap::new(),
        portal_plans: HashMap::new(),
        batch_open: false,
        mediate_next: false,
        drained: &drained,
        writing: &writing,
        conforming_strings: &conforming_strings,
        server_utf8,
        shadow,
    };
    let mut down = Downstream {
        shared: &shared,
        flow: &flow,
        became_idle: &became_idle,
        server: server_r,
        buf: backend.read_buf,
        client: client_w,
        wants_idle_signal: shared.config.idle_timeout().is_some(),
        server_said_fatal: false,
        drained: &drained,
        writing: &writing,
        conforming_strings: &conforming_strings,
        server_utf8,
        mirroring: shared.mirror.is_some(),
    };
    let end = loop {
        let end = tokio::select! {
            // Both run until the session ends: no fairness to keep, so no RNG per wake-up.
            biased;
            e = up.run() => e,
            e = down.run() => e,
        };
        match (end, mirror_session.as_mut()) {
            (End::Mediate, Some(ms)) => {
                // Boxed: only mirroring sessions mediate, and its state is large.
                if let Err(e) = Box::pin(super::mediate::mediate(&mut up, &mut down, ms)).await {
                    break e;
                }
            }
            (End::Mediate, None) => {
                break End::Io(
                    "client",
                    std::io::Error::other("mediation without mirroring"),
                )
            }
            (e, _) => break e,
        }
    };
    match &end {
        End::ClientProtocol(e) => {
            tracing::warn!(%peer, error = %e, "Closing a client that broke the protocol.");
            metrics::counter!(PROTOCOL_ERRORS_TOTAL, "kind" => "client").increment(1);
            send_error(&mut down.client, &fatal("08P01", e.to_string())).await;
        }
        End::ClientEncoding(encoding) => {
            tracing::warn!(%peer, %encoding, "Closing a mirrored session whose client encoding left UTF8.");
            send_error(&mut down.client, &encoding_refused(encoding)).await;
        }
        End::IdleTimeout => {
            send_error(
                &mut down.client,
                &fatal(
                    "57P05",
                    "terminating connection due to idle-session timeout",
                ),
            )
            .await;
        }
        End::Shutdown => {
            send_error(
                &mut down.client,
                &fatal(
                    "57P01",
                    "terminating connection due to administrator command",
                ),
            )
            .await;
        }
        End::Io(side, e) => {
            tracing::debug!(%peer, side, error = %e, "Session ended by an I/O error.")
        }
        End::ServerClosed if !down.server_said_fatal => {
            tracing::warn!(%peer, "The old database closed a session's connection without an error.");
            let fields = fatal(
                "08006",
                "switchyard: the connection to the old database was lost",
            );
            send_error(&mut down.client, &fields).await;
        }
        End::ClientClosed | End::ClientTerminated | End::ServerClosed | End::Mediate => {}
    }
    if !matches!(end, End::ClientTerminated | End::ServerClosed) {
        // Let the server end the backend cleanly rather than log an unexpected EOF.
        let _ = up.server.write_all(b"X\0\0\0\x04").await;
    }
    let _ = down.client.shutdown().await;
    tracing::debug!(%peer, ?end, "Session closed.");
}

/// A portal bound to a statement the proxy mediates.
#[derive(Clone)]
pub(super) struct MediatedPortal {
    pub plan: Arc<Plan>,
    pub sql: Arc<str>,
    /// The capture columns come back in binary (the client asked for one binary format).
    pub extra_binary: bool,
    pub has_params: bool,
}

/// Client → primary.
pub(super) struct Upstream<'a, R> {
    pub(super) shared: &'a Shared,
    flow: &'a Mutex<Flow>,
    became_idle: &'a IdleSignal,
    pub(super) client: R,
    pub(super) buf: BytesMut,
    pub(super) server: OwnedWriteHalf,
    /// Classification of each prepared statement, by name ("" is the unnamed one).
    statements: HashMap<String, Arc<[Classified]>>,
    portals: HashMap<String, Arc<[Classified]>>,
    /// Class of the first statement executed since the last Sync: labels that request's
    /// latency.
    batch_class: Option<StatementClass>,
    mirror: Option<Arc<crate::mirror::Mirror>>,
    /// Prepared statements the proxy mediates: their plan and original text.
    pub(super) plans: HashMap<String, (Arc<Plan>, Arc<str>)>,
    pub(super) portal_plans: HashMap<String, MediatedPortal>,
    /// Extended-protocol messages went through since the last Sync.
    pub(super) batch_open: bool,
    /// The next buffered message needs mediation.
    mediate_next: bool,
    drained: &'a tokio::sync::Notify,
    writing: &'a AtomicBool,
    /// The server's `standard_conforming_strings` as it last reported it.
    conforming_strings: &'a AtomicBool,
    /// The database's encoding is UTF8 (see `client_encoding_ok`).
    server_utf8: bool,
    /// Shadow reads: samples this session's reads (None when off).
    shadow: Option<ShadowTap>,
}

impl<R: AsyncRead + Unpin> Upstream<'_, R> {
    async fn run(&mut self) -> End {
        let idle_timeout = self.shared.config.idle_timeout();
        let mut shutdown = self.shared.shutdown.clone();
        // Created once, not per read: each new wait registers with the watch channel
        // (a lock) and deregisters when dropped, on every message otherwise.
        let stop = async move { crate::shared::stopped(&mut shutdown).await };
        tokio::pin!(stop);
        let mut shutdown_seen = false;
        let mut room = MIN_READ_CHUNK;
        let mut last_read = 0;
        loop {
            // Whatever whole messages are buffered go out in one write.
            let (chunk, err, terminate) = self.take_frames();
            if let Some(chunk) = chunk {
                if let Err(e) = self.server.write_all(&chunk).await {
                    return End::Io("primary", e);
                }
            }
            if terminate {
                return End::ClientTerminated;
            }
            if let Some(e) = err {
                return End::ClientProtocol(e);
            }
            if self.mediate_next {
                self.mediate_next = false;
                // Hand over only when every earlier request was answered and the other pump
                // is not in the middle of a write.
                loop {
                    let quiet = self
                        .flow
                        .lock()
                        .map(|f| f.pending.is_empty())
                        .unwrap_or(true)
                        && !self.writing.load(Ordering::Relaxed);
                    if quiet {
                        return End::Mediate;
                    }
                    self.drained.notified().await;
                }
            }
            make_room(&mut self.buf, &mut room, last_read);
            let idle = self.flow.lock().map(|f| f.idle()).unwrap_or(false);
            let read = self.client.read_buf(&mut self.buf);
            let timeout = async {
                match idle_timeout {
                    Some(t) if idle => tokio::time::sleep(t).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                // Polled in order: no random start (it costs an RNG draw per message).
                biased;
                r = read => match r {
                    Ok(0) => return End::ClientClosed,
                    Ok(n) => last_read = n,
                    Err(e) => return End::Io("client", e),
                },
                _ = timeout => return End::IdleTimeout,
                _ = self.became_idle.notified(), if !idle && idle_timeout.is_some() => {}
                _ = &mut stop, if !shutdown_seen => {
                    if self.flow.lock().map(|f| f.idle()).unwrap_or(true) {
                        return End::Shutdown;
                    }
                    // Busy: keep serving; the downstream pump ends the session when the
                    // transaction is over.
                    shutdown_seen = true;
                }
            }
        }
    }

    /// Splits off the complete messages at the front of the buffer, inspecting each.
    /// Returns them as one chunk, the protocol error that stopped the scan (if any), and
    /// whether the client asked to terminate.
    fn take_frames(&mut self) -> (Option<Bytes>, Option<ProtocolError>, bool) {
        let max = self.shared.config.max_message_size;
        let mut end = 0;
        let mut err = None;
        let mut terminate = false;
        let mut frames = Vec::new();
        // With dual writes, an extended-protocol batch is forwarded only once its Sync or
        // Flush is buffered, so a batch that turns out to need mediation is handed over
        // whole (the server holds results until then anyway).
        let hold_batches = self.mirror.is_some();
        let mut boundary = (0usize, 0usize);
        while let Some(header) = self.buf.get(end..end + Frame::HEADER) {
            let tag = header[0];
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if !is_known_tag(tag) {
                err = Some(ProtocolError::UnknownFrontendTag(tag));
                break;
            }
            if len < 4 {
                err = Some(ProtocolError::BadLength {
                    tag: tag as char,
                    len: i64::from(len),
                });
                break;
            }
            let total = len as usize + 1;
            if total > max {
                err = Some(ProtocolError::TooLarge { len: total, max });
                break;
            }
            if self.buf.len() < end + total {
                self.buf.reserve(end + total - self.buf.len());
                break;
            }
            if hold_batches && self.needs_mediation(tag, end + Frame::HEADER, end + total) {
                self.mediate_next = true;
                if !self.batch_open {
                    // Hand over from the start of this batch.
                    frames.truncate(boundary.1);
                    end = boundary.0;
                }
                return self.split_frames(end, frames, err, false);
            }
            frames.push((end, total));
            end += total;
            if !matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C') {
                boundary = (end, frames.len());
            }
            if tag == b'X' {
                terminate = true;
                break;
            }
        }
        if hold_batches && end > boundary.0 && end - boundary.0 < HOLD_LIMIT && !self.batch_open {
            frames.truncate(boundary.1);
            end = boundary.0;
        }
        self.split_frames(end, frames, err, terminate)
    }

    fn split_frames(
        &mut self,
        end: usize,
        frames: Vec<(usize, usize)>,
        err: Option<ProtocolError>,
        terminate: bool,
    ) -> (Option<Bytes>, Option<ProtocolError>, bool) {
        if end == 0 {
            return (None, err, terminate);
        }
        let chunk = self.buf.split_to(end).freeze();
        for (start, len) in frames {
            let frame = Frame::from_encoded(chunk.slice(start..start + len));
            self.inspect(&frame, false);
        }
        (Some(chunk), err, terminate)
    }

    /// Whether the message in `buf[start..end]` (body) must be handled by the mediator.
    fn needs_mediation(&mut self, tag: u8, start: usize, end: usize) -> bool {
        let body = &self.buf[start..end];
        let cstr = |b: &[u8]| -> Option<(String, usize)> {
            let nul = b.iter().position(|&c| c == 0)?;
            Some((std::str::from_utf8(&b[..nul]).ok()?.to_string(), nul + 1))
        };
        match tag {
            b'Q' => match cstr(body) {
                Some((sql, _)) => self.plan_needs_mediation(&sql, false),
                None => false,
            },
            b'P' => {
                let Some((name, n)) = cstr(body) else {
                    return false;
                };
                let needed = match cstr(&body[n..]) {
                    // COPY through the extended protocol streams on the passthrough path
                    // (not mirrored; counted).
                    Some((sql, _)) => self.plan_needs_mediation(&sql, true),
                    None => false,
                };
                if !needed {
                    // Forget a mediated statement this name replaces, before later messages
                    // in the same read are judged.
                    self.plans.remove(&name);
                }
                needed
            }
            b'B' => {
                let Some((portal, n)) = cstr(body) else {
                    return false;
                };
                let needed = cstr(&body[n..]).is_some_and(|(st, _)| self.plans.contains_key(&st));
                if !needed {
                    self.portal_plans.remove(&portal);
                }
                needed
            }
            b'D' => match (body.first(), cstr(body.get(1..).unwrap_or_default())) {
                (Some(b'S'), Some((name, _))) => self.plans.contains_key(&name),
                (Some(b'P'), Some((name, _))) => self.portal_plans.contains_key(&name),
                _ => false,
            },
            b'E' => cstr(body).is_some_and(|(p, _)| self.portal_plans.contains_key(&p)),
            _ => false,
        }
    }

    fn plan_needs_mediation(&mut self, sql: &str, extended: bool) -> bool {
        if self.mirror.is_some() && crate::classify::depends_on_conforming_strings(sql) {
            // How the server reads it depends on `standard_conforming_strings`, which a
            // request still in flight may change: the mediator decides once those are
            // answered.
            return true;
        }
        let classes = self.classify(sql);
        if !classes.iter().any(|c| {
            c.opaque
                || matches!(
                    c.class,
                    StatementClass::Write | StatementClass::Ddl | StatementClass::Transaction
                )
        }) {
            return false;
        }
        let Some(mirror) = &self.mirror else {
            return false;
        };
        let plan = mirror.plan(sql);
        let unmirrored = match &*plan {
            Plan::PassUnmirrored { reason } => Some(*reason),
            Plan::CopyIn { .. } if extended => Some("COPY FROM STDIN (extended protocol)"),
            _ => None,
        };
        if let Some(reason) = unmirrored {
            mirror.status.statement_mode(
                classes.first().map(|c| c.fingerprint).unwrap_or(0),
                reason,
                false,
                sql,
            );
            return false;
        }
        plan.needs_mediation()
    }

    /// `sql` as the server reads it, in a form that reads the same whatever
    /// `standard_conforming_strings` says (see `classify::conforming`).
    pub(super) fn as_server_reads<'s>(&self, sql: &'s str) -> Cow<'s, str> {
        if self.conforming_strings.load(Ordering::Relaxed) {
            Cow::Borrowed(sql)
        } else {
            crate::classify::conforming(sql)
        }
    }

    /// Takes note of a ParameterStatus the server sent while the mediator ran; returns the
    /// client encoding when it left UTF8 (the session must end).
    pub(super) fn note_parameter_status(&self, body: &[u8]) -> Option<String> {
        let mirroring = self.mirror.is_some().then_some(self.server_utf8);
        note_parameter(self.conforming_strings, mirroring, body)
    }

    pub(super) fn txn_status(&self) -> u8 {
        self.flow.lock().map(|f| f.txn_status).unwrap_or(b'I')
    }

    pub(super) fn set_txn_status(&self, status: u8) {
        if let Ok(mut f) = self.flow.lock() {
            f.txn_status = status;
        }
    }

    /// Bookkeeping for messages the mediator handles.
    pub(super) fn note_query(&mut self, sql: &str) {
        for c in self.classify(sql).iter() {
            count_statement(c);
        }
    }

    pub(super) fn note_parse(&mut self, name: &str, sql: &str) {
        let classes = self.classify(sql);
        self.statements.insert(name.to_string(), classes);
    }

    pub(super) fn note_bind(&mut self, frame: &Frame) {
        self.inspect(frame, true);
    }

    pub(super) fn note_execute(&mut self, frame: &Frame) {
        self.inspect(frame, true);
    }

    pub(super) fn note_close(&mut self, frame: &Frame) {
        self.inspect(frame, true);
    }

    /// Bookkeeping for one client message: classification, and the requests that will
    /// each end in a ReadyForQuery (unless the mediator answers them: `mediated`).
    fn inspect(&mut self, frame: &Frame, mediated: bool) {
        if self.mirror.is_some() {
            match frame.tag() {
                b'S' | b'Q' => self.batch_open = false,
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.batch_open = !mediated,
                _ => {}
            }
            match frame.tag() {
                b'P' => {
                    if let Some(name) = frame.body().split(|&b| b == 0).next() {
                        if let Ok(name) = std::str::from_utf8(name) {
                            self.plans.remove(name);
                        }
                    }
                }
                b'B' => {
                    if let Ok((portal, _)) = bind_names(frame) {
                        let portal = portal.to_string();
                        self.portal_plans.remove(&portal);
                    }
                }
                _ => {}
            }
        }
        match frame.tag() {
            b'Q' => {
                let body = frame.body();
                let sql = body
                    .strip_suffix(&[0])
                    .and_then(|s| std::str::from_utf8(s).ok());
                let first = sql.and_then(|sql| {
                    let sql = &*self.as_server_reads(sql);
                    let classes = self.classify(sql);
                    for c in classes.iter() {
                        count_statement(c);
                    }
                    if !mediated {
                        let flow = self.flow;
                        if let Some(tap) = self.shadow.as_mut() {
                            tap.query(sql, &classes, || idle(flow));
                        }
                    }
                    classes.first().map(|c| c.class)
                });
                if !mediated {
                    self.begin_request(first);
                }
            }
            b'P' => {
                let body = frame.body();
                let mut parts = body.splitn(3, |&b| b == 0);
                let name = parts.next().and_then(|n| std::str::from_utf8(n).ok());
                let sql = parts.next().and_then(|s| std::str::from_utf8(s).ok());
                if let (Some(name), Some(sql)) = (name, sql) {
                    let classes = self.classify(&self.as_server_reads(sql));
                    if let Some(tap) = self.shadow.as_mut() {
                        tap.parse(frame, &classes);
                    }
                    self.statements.insert(name.to_string(), classes);
                }
            }
            b'B' => {
                if let Some(tap) = self.shadow.as_mut() {
                    tap.bind(frame);
                }
                if let Ok((portal, statement)) = bind_names(frame) {
                    match self.statements.get(statement) {
                        Some(c) => {
                            let c = c.clone();
                            match self.portals.get_mut(portal) {
                                Some(slot) => *slot = c,
                                None => {
                                    self.portals.insert(portal.to_string(), c);
                                }
                            }
                        }
                        None => {
                            self.portals.remove(portal);
                        }
                    }
                }
            }
            b'E' => {
                if !mediated {
                    let flow = self.flow;
                    if let Some(tap) = self.shadow.as_mut() {
                        tap.execute(frame, || idle(flow));
                    }
                }
                if let Ok(portal) = execute_portal(frame) {
                    if let Some(classes) = self.portals.get(portal) {
                        for c in classes.iter() {
                            count_statement(c);
                        }
                        if self.batch_class.is_none() {
                            self.batch_class = classes.first().map(|c| c.class);
                        }
                    }
                }
            }
            b'C' => {
                let body = frame.body();
                if let (Some(&kind), Some(name)) =
                    (body.first(), body.get(1..body.len().saturating_sub(1)))
                {
                    if let Ok(name) = std::str::from_utf8(name) {
                        if let Some(tap) = self.shadow.as_mut() {
                            tap.close(kind, name);
                        }
                        if kind == b'S' {
                            self.statements.remove(name);
                        } else {
                            self.portals.remove(name);
                        }
                    }
                }
            }
            b'S' if !mediated => {
                let class = self.batch_class.take();
                self.begin_request(class);
            }
            b'F' if !mediated => self.begin_request(None),
            _ => {}
        }
    }

    fn begin_request(&self, class: Option<StatementClass>) {
        if let Ok(mut f) = self.flow.lock() {
            f.pending.push_back((Instant::now(), class));
        }
    }

    fn classify(&self, sql: &str) -> Arc<[Classified]> {
        let (classes, hit) = self.shared.classifier.classify(sql);
        let hot = crate::metrics::hot();
        if hit { &hot.cache_hit } else { &hot.cache_miss }.increment(1);
        classes
    }
}

/// Outside a transaction block, and no request still in flight opens one: a statement sent
/// now runs on its own (what shadow reads may sample). Requests in flight are common
/// (drivers pipeline Close/Sync after a query), so only transaction statements among them
/// count.
fn idle(flow: &Mutex<Flow>) -> bool {
    flow.lock()
        .map(|f| {
            f.txn_status == b'I'
                && f.pending
                    .iter()
                    .all(|(_, c)| *c != Some(StatementClass::Transaction))
        })
        .unwrap_or(false)
}

fn count_statement(c: &Classified) {
    crate::metrics::hot().statements[c.class.index()].increment(1);
    if !c.parsed {
        metrics::counter!(STATEMENTS_UNPARSED_TOTAL).increment(1);
    }
}

/// Primary → client.
pub(super) struct Downstream<'a, W> {
    shared: &'a Shared,
    flow: &'a Mutex<Flow>,
    became_idle: &'a IdleSignal,
    /// Only an idle timeout needs the wake-up; without one, skip the cost per request.
    wants_idle_signal: bool,
    /// The server explained itself before closing; otherwise the proxy tells the client.
    server_said_fatal: bool,
    pub(super) server: OwnedReadHalf,
    pub(super) buf: BytesMut,
    pub(super) client: W,
    drained: &'a tokio::sync::Notify,
    writing: &'a AtomicBool,
    conforming_strings: &'a AtomicBool,
    server_utf8: bool,
    /// Only dual writes wait for this pump to drain.
    mirroring: bool,
}

impl<W: AsyncWrite + Unpin> Downstream<'_, W> {
    async fn run(&mut self) -> End {
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
                if let Err(e) = write_flush(&mut self.client, &chunk).await {
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
        f.txn_status = status;
        if let Some((started, class)) = f.pending.pop_front() {
            let class = class.unwrap_or(StatementClass::Other);
            crate::metrics::hot().request_duration[class.index()]
                .record(started.elapsed().as_secs_f64());
        }
        f.idle()
    }
}

/// Follows `standard_conforming_strings` in a ParameterStatus body (name, value).
/// Follows a ParameterStatus (name, value). `mirroring`: `Some(server_utf8)` when the
/// session mirrors. Returns the new client encoding when the session mirrors and the
/// encoding will not carry UTF-8: the end of the session (see `End::ClientEncoding`).
fn note_parameter(flag: &AtomicBool, mirroring: Option<bool>, body: &[u8]) -> Option<String> {
    let mut parts = body.split(|&b| b == 0);
    let name = parts.next()?;
    let value = parts.next()?;
    if name == b"standard_conforming_strings" {
        flag.store(value != b"off", Ordering::Relaxed);
    } else if name == b"client_encoding" {
        if let Some(server_utf8) = mirroring {
            if !client_encoding_ok(value, server_utf8) {
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    None
}

/// PostgreSQL reports the encoding as `UTF8`; clients may spell it otherwise.
pub(super) fn is_utf8_encoding(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"UTF8") || name.eq_ignore_ascii_case(b"UTF-8")
}

/// Text on the wire is UTF-8: the client encoding is UTF8, or SQL_ASCII (no conversion:
/// what psql picks under the C locale) over a UTF8 database, which checks what it is sent.
pub(super) fn client_encoding_ok(client: &[u8], server_utf8: bool) -> bool {
    is_utf8_encoding(client) || (server_utf8 && client.eq_ignore_ascii_case(b"SQL_ASCII"))
}

/// What a session that mirrors and leaves UTF8 is told.
pub(super) fn encoding_refused(encoding: &str) -> crate::protocol::backend::ErrorFields {
    fatal(
        "0A000",
        format!(
            "switchyard: dual writes need client_encoding UTF8; this session uses {encoding} \
             (statements and row images would not reach the new database as the old one \
             reads them)"
        ),
    )
}

/// Counts an ErrorResponse by SQLSTATE without decoding the rest of it; returns whether it
/// ends the connection (severity FATAL or PANIC).
pub(super) fn count_server_error(body: &[u8]) -> bool {
    let mut rest = body;
    let mut fatal = false;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(nul) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let value = &tail[..nul];
        match code {
            b'S' => fatal = value == b"FATAL" || value == b"PANIC",
            b'C' => {
                if let Ok(state) = std::str::from_utf8(value) {
                    metrics::counter!(SERVER_ERRORS_TOTAL, "sqlstate" => state.to_string())
                        .increment(1);
                }
            }
            _ => {}
        }
        rest = &tail[nul + 1..];
    }
    fatal
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}
