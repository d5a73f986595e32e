//! Client → primary: frames whatever the client sent, inspects the messages it must
//! (statements to classify and count, requests that will each end in a ReadyForQuery), and
//! forwards whole messages in one write per read. When a request needs the mediator it stops
//! there and hands the session over (`End::Mediate`) once every earlier request is answered.

use super::flow::{idle, Flow};
use super::{make_room, End, IdleSignal, MIN_READ_CHUNK};
use crate::classify::{Classified, StatementClass};
use crate::metrics::STATEMENTS_UNPARSED_TOTAL;
use crate::mirror::plan::Plan;
use crate::protocol::frontend::{bind_names, execute_portal, is_known_tag};
use crate::protocol::{Frame, ProtocolError};
use crate::shadow::ShadowTap;
use crate::shared::Shared;
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use switchyard_core::tls_stream::write_flushed;
use switchyard_core::tls_stream::DbWrite;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest unfinished extended-protocol batch held back while mirroring; beyond it the
/// batch is forwarded as it comes.
const HOLD_LIMIT: usize = 1 << 20;

/// A whole message in the read buffer: where it starts, its length, and the classification
/// the mediation scan made of it (a Parse).
type Buffered = (usize, usize, Option<Arc<[Classified]>>);

/// Client → primary.
pub(crate) struct Upstream<'a, R> {
    pub(in crate::frontend) shared: &'a Shared,
    pub(in crate::frontend) flow: &'a Mutex<Flow>,
    pub(in crate::frontend) became_idle: &'a IdleSignal,
    pub(in crate::frontend) client: R,
    pub(in crate::frontend) buf: BytesMut,
    pub(in crate::frontend) server: DbWrite,
    /// Classification of each prepared statement, by name ("" is the unnamed one).
    pub(in crate::frontend) statements: crate::NameMap<Arc<[Classified]>>,
    pub(in crate::frontend) portals: crate::NameMap<Arc<[Classified]>>,
    /// Class of the first statement executed since the last Sync: labels that request's
    /// latency.
    pub(in crate::frontend) batch_class: Option<StatementClass>,
    pub(in crate::frontend) mirror: Option<Arc<crate::mirror::Mirror>>,
    /// Plans of prepared statements and portals that are not plain reads, by name ("" is
    /// the unnamed one): an Execute is mediated by its portal's plan.
    pub(in crate::frontend) plans: crate::NameMap<Arc<Plan>>,
    pub(in crate::frontend) portal_plans: crate::NameMap<Arc<Plan>>,
    /// Extended-protocol messages went through since the last Sync.
    pub(in crate::frontend) batch_open: bool,
    /// The next buffered message needs mediation.
    pub(in crate::frontend) mediate_next: bool,
    /// The classification of the Parse the mediation scan just read, handed to `inspect`
    /// with its frame so a statement is classified once.
    pub(in crate::frontend) scanned_parse: Option<Arc<[Classified]>>,
    pub(in crate::frontend) drained: &'a tokio::sync::Notify,
    pub(in crate::frontend) writing: &'a AtomicBool,
    /// The server's `standard_conforming_strings` as it last reported it.
    pub(in crate::frontend) conforming_strings: &'a AtomicBool,
    /// The session's client encoding, for the statements the proxy reads and writes.
    pub(in crate::frontend) client_text: &'a super::ClientText,
    /// The database's encoding is UTF8 (see `client_encoding_ok`).
    pub(in crate::frontend) server_utf8: bool,
    /// Shadow reads: samples this session's reads (None when off).
    pub(in crate::frontend) shadow: Option<ShadowTap>,
    /// Reads the cutover routes to new.
    pub(in crate::frontend) route: super::route::Route,
    /// Which database is this session's primary.
    pub(in crate::frontend) direction: switchyard_core::direction::Direction,
    /// Wakes the idle session when writes move (`cutover::Live::watch_moves`).
    pub(in crate::frontend) moves: tokio::sync::watch::Receiver<u64>,
}

impl<R: AsyncRead + Unpin> Upstream<'_, R> {
    pub(in crate::frontend) async fn run(&mut self) -> End {
        let idle_timeout = self.shared.config.idle_timeout();
        let mut shutdown = self.shared.shutdown.clone();
        // Created once, not per read: each new wait registers with the watch channel
        // (a lock) and deregisters when dropped, on every message otherwise.
        let stop = async move { crate::shutdown::stopped(&mut shutdown).await };
        tokio::pin!(stop);
        let mut shutdown_seen = false;
        let mut room = MIN_READ_CHUNK;
        let mut last_read = 0;
        loop {
            if self.may_hold_or_move() && self.at_boundary() {
                if self.buf.len() >= Frame::HEADER {
                    if let Some(end) = self.at_request().await {
                        return end;
                    }
                } else if self.must_move() {
                    return End::Swap;
                }
            }
            // Whatever whole messages are buffered go out in one write.
            let (chunk, err, terminate) = self.take_frames();
            if let Some(chunk) = chunk {
                if let Err(e) = write_flushed(&mut self.server, &chunk).await {
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
                // Idle only: a wait registered per request, not per read.
                _ = self.moves.changed(), if idle && self.mirror.is_some() => {}
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
            frames.push((end, total, self.scanned_parse.take()));
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
        frames: Vec<Buffered>,
        err: Option<ProtocolError>,
        terminate: bool,
    ) -> (Option<Bytes>, Option<ProtocolError>, bool) {
        if end == 0 {
            return (None, err, terminate);
        }
        let chunk = self.buf.split_to(end).freeze();
        for (start, len, classes) in frames {
            let frame = Frame::from_encoded(chunk.slice(start..start + len));
            self.inspect_classified(&frame, false, classes);
        }
        (Some(chunk), err, terminate)
    }
}

impl<R> Upstream<'_, R> {
    /// `sql` as the server reads it, in a form that reads the same whatever
    /// `standard_conforming_strings` says (see `classify::conforming`).
    pub(in crate::frontend) fn as_server_reads<'s>(&self, sql: &'s str) -> Cow<'s, str> {
        if self.conforming_strings.load(Ordering::Relaxed) {
            Cow::Borrowed(sql)
        } else {
            crate::classify::conforming(sql)
        }
    }

    /// The shadow-read tap, unless the session's text is in an encoding other than UTF-8
    /// (the shadow executors run statements on connections of their own, in UTF8).
    pub(in crate::frontend) fn shadow_tap(&mut self) -> Option<&mut ShadowTap> {
        self.shadow.as_mut().filter(|_| self.client_text.is_utf8())
    }

    /// Takes note of a ParameterStatus the server sent while the mediator ran; returns the
    /// client encoding when the proxy cannot read it (the session must end).
    pub(in crate::frontend) fn note_parameter_status(&self, body: &[u8]) -> Option<String> {
        let mirroring = self.mirror.is_some().then_some(self.server_utf8);
        super::note_parameter(self.conforming_strings, self.client_text, mirroring, body)
    }

    pub(in crate::frontend) fn txn_status(&self) -> u8 {
        self.flow.lock().map(|f| f.txn_status).unwrap_or(b'I')
    }

    pub(in crate::frontend) fn set_txn_status(&self, status: u8) {
        if let Ok(mut f) = self.flow.lock() {
            f.status(status);
        }
    }

    /// Bookkeeping for messages the mediator handles.
    pub(in crate::frontend) fn note_query(&mut self, sql: &str) {
        let classes = self.classify(sql);
        self.route.observe(sql, &classes);
        for c in classes.iter() {
            count_statement(self.shared, c);
        }
    }

    /// `raw`: the whole Parse message.
    pub(in crate::frontend) fn note_parse(&mut self, name: &str, sql: &str, raw: &Bytes) {
        let classes = self.classify(sql);
        // Drivers that send everything as Parse/Bind/Execute set session state this way.
        self.route.carry.observe(sql, &classes);
        let shape = self.record_parse(name, sql, &classes);
        self.statements.insert(name.to_string(), classes);
        self.route.on_parse(name, raw.clone(), shape);
    }

    pub(in crate::frontend) fn note_bind(&mut self, frame: &Frame) {
        self.inspect(frame, true);
        if let Ok((portal, statement)) = bind_names(frame) {
            let (portal, statement) = (portal.to_string(), statement.to_string());
            self.record_bind(&portal, &statement);
        }
    }

    pub(in crate::frontend) fn note_execute(&mut self, frame: &Frame) {
        self.inspect(frame, true);
    }

    pub(in crate::frontend) fn note_close(&mut self, frame: &Frame) {
        self.inspect(frame, true);
        let body = frame.body();
        if let (Some(&kind), Some(name)) = (body.first(), body.get(1..body.len().saturating_sub(1)))
        {
            self.route.on_close(kind, &String::from_utf8_lossy(name));
        }
        self.record_close(frame.body().as_ref());
    }

    /// Bookkeeping for one client message: classification, and the requests that will
    /// each end in a ReadyForQuery (unless the mediator answers them: `mediated`).
    pub(in crate::frontend) fn inspect(&mut self, frame: &Frame, mediated: bool) {
        self.inspect_classified(frame, mediated, None);
    }

    /// [`Self::inspect`] of a Parse already classified (`classes`).
    fn inspect_classified(
        &mut self,
        frame: &Frame,
        mediated: bool,
        classes: Option<Arc<[Classified]>>,
    ) {
        if self.mirror.is_some() {
            match frame.tag() {
                b'S' | b'Q' => self.batch_open = false,
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.batch_open = !mediated,
                _ => {}
            }
        }
        match frame.tag() {
            b'Q' => {
                let body = frame.body();
                let text = body
                    .strip_suffix(&[0])
                    .and_then(|s| self.client_text.decode(s).ok());
                let first = text.and_then(|sql| {
                    let sql = &*self.as_server_reads(&sql);
                    let classes = self.classify(sql);
                    self.route.observe(sql, &classes);
                    for c in classes.iter() {
                        count_statement(self.shared, c);
                    }
                    if !mediated {
                        let flow = self.flow;
                        if let Some(tap) = self.shadow_tap() {
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
                let classes = classes.or_else(|| {
                    let sql = parts.next().and_then(|s| self.client_text.decode(s).ok())?;
                    Some(self.classify(&self.as_server_reads(&sql)))
                });
                if let (Some(name), Some(classes)) = (name, classes) {
                    if let Some(tap) = self.shadow_tap() {
                        tap.parse(frame, &classes);
                    }
                    self.statements.insert(name.to_string(), classes);
                }
            }
            b'B' => {
                if let Some(tap) = self.shadow_tap() {
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
                    if let Some(tap) = self.shadow_tap() {
                        tap.execute(frame, || idle(flow));
                    }
                }
                if let Ok(portal) = execute_portal(frame) {
                    if let Some(classes) = self.portals.get(portal) {
                        for c in classes.iter() {
                            count_statement(self.shared, c);
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
                        if let Some(tap) = self.shadow_tap() {
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
            f.begin(class);
        }
    }

    pub(in crate::frontend) fn classify(&self, sql: &str) -> Arc<[Classified]> {
        let (classes, hit) = self.shared.classifier.classify(sql);
        let hot = crate::metrics::hot();
        if hit { &hot.cache_hit } else { &hot.cache_miss }.increment(1);
        classes
    }
}

fn count_statement(shared: &Shared, c: &Classified) {
    shared
        .counters
        .statements_total
        .fetch_add(1, Ordering::Relaxed);
    crate::metrics::hot().statements[c.class.index()].increment(1);
    if !c.parsed {
        metrics::counter!(STATEMENTS_UNPARSED_TOTAL).increment(1);
    }
}
