//! One client session after startup: two pumps, client→primary (`upstream`) and
//! primary→client (`downstream`), running concurrently so neither side can stall the other
//! (a server blocked writing results must still be read while the client keeps sending).
//! Each pump forwards whole messages in the batches they arrived in, one write per read, and
//! looks only at the messages it must. A request that needs dual-write handling pauses both
//! and is handed to the mediator (`lockstep`).

mod carry;
mod downstream;
mod flow;
mod lockstep;
mod mirror;
mod reader;
mod route;
mod swap;
mod text;
mod upstream;

pub use swap::Place;

pub(in crate::frontend) use downstream::Downstream;
pub(crate) use flow::Flow;
pub(in crate::frontend) use mirror::writes_large_object;
pub(in crate::frontend) use reader::{parse_hash, Reader};
pub(in crate::frontend) use text::ClientText;
pub(in crate::frontend) use upstream::Upstream;

use super::reply::{fatal, send_error};
use super::stream::ClientStream;
use crate::backend::BackendConn;
use crate::metrics::{PROTOCOL_ERRORS_TOTAL, SERVER_ERRORS_TOTAL};
use crate::mirror::txn::MirrorSession;
use crate::protocol::ProtocolError;
use crate::shadow::ShadowTap;
use crate::shared::Shared;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use switchyard_core::direction::Direction;
use switchyard_core::tls_stream::write_flushed;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Read buffers start small, so thousands of idle sessions stay cheap, and grow while reads
/// keep filling them (large results, COPY), up to `MAX_READ_CHUNK`.
const MIN_READ_CHUNK: usize = 4 * 1024;
const MAX_READ_CHUNK: usize = 256 * 1024;

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

/// Wakes the upstream pump when the session turns idle, so an idle timeout or a pending
/// shutdown is re-armed without waiting for the client's next message.
type IdleSignal = tokio::sync::Notify;

/// Why a session ended (or, for `Mediate`, why the pumps paused).
#[derive(Debug)]
pub(crate) enum End {
    /// A request needs dual-write handling; both pumps are quiet.
    Mediate,
    /// Writes moved to the other database: the session moves before its next request.
    Swap,
    ClientClosed,
    ClientTerminated,
    ServerClosed,
    IdleTimeout,
    Shutdown,
    ClientProtocol(ProtocolError),
    /// The session mirrors and its client encoding became one the proxy cannot read
    /// (`SET client_encoding`).
    ClientEncoding(String),
    Io(&'static str, std::io::Error),
}

pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) client: ClientStream,
    /// Bytes read from the client past its startup packet.
    pub(super) client_buf: BytesMut,
    pub(super) backend: BackendConn,
    pub(super) peer: SocketAddr,
    pub(super) place: Place,
}

impl Session {
    pub async fn run(self) {
        let Session {
            shared,
            client,
            client_buf,
            backend,
            peer,
            place,
        } = self;
        // Plain TCP splits into owned halves without a lock; TLS needs the shared split.
        match client {
            ClientStream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                pump(shared, r, w, client_buf, backend, peer, place).await
            }
            ClientStream::Tls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                // Boxed: a second instance of the pump's state would otherwise size every
                // session's task, TLS or not.
                Box::pin(pump(shared, r, w, client_buf, backend, peer, place)).await
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
    mut place: swap::Place,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let direction = place.direction;
    let flow = Mutex::new(Flow::new(Some(shared.cutover.gate.busy_counter())));
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
    let client_text = ClientText::new(
        backend
            .params
            .iter()
            .find(|(k, _)| k == "client_encoding")
            .and_then(|(_, v)| ClientText::index_of(v, server_utf8))
            .unwrap_or(0),
    );
    let mirror = shared.session_mirror(direction);
    let mut mirror_session = mirror.clone().map(MirrorSession::new);
    let shadow = shared
        .shadow
        .clone()
        .filter(|_| direction == Direction::OldToNew)
        .map(|s| ShadowTap::new(s, &backend.params));
    let mut route = route::Route::new(&shared, place.params.clone(), &backend.params);
    route.primary_new = direction == Direction::NewToOld;
    route.cancel = Some((
        place.cancel,
        crate::cancel::CancelTarget {
            to: backend.cancel_to.clone(),
            pid: backend.pid,
            key: backend.key.clone(),
        },
    ));
    let (server_r, server_w) = backend.stream.into_split();
    let mut up = Upstream {
        shared: &shared,
        flow: &flow,
        became_idle: &became_idle,
        client: client_r,
        buf: client_buf,
        server: server_w,
        statements: crate::NameMap::default(),
        portals: crate::NameMap::default(),
        batch_class: None,
        mirror,
        plans: crate::NameMap::default(),
        portal_plans: crate::NameMap::default(),
        batch_open: false,
        mediate_next: false,
        scanned_parse: None,
        drained: &drained,
        writing: &writing,
        conforming_strings: &conforming_strings,
        client_text: &client_text,
        server_utf8,
        shadow,
        route,
        direction,
        moves: shared.cutover.watch_moves(),
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
        client_text: &client_text,
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
                set_mediating(&flow, true);
                // Boxed: only mirroring sessions mediate, and its state is large.
                let r = Box::pin(lockstep::mediate(&mut up, &mut down, ms)).await;
                set_mediating(&flow, false);
                if let Err(e) = r {
                    break e;
                }
            }
            (End::Swap, _) => {
                let to = shared.cutover.direction();
                let moved = Box::pin(swap::swap(
                    &shared,
                    &mut place,
                    to,
                    &mut up,
                    &mut down,
                    &mut mirror_session,
                ))
                .await;
                if let Err(e) = moved {
                    tracing::warn!(%peer, error = %e, "A session could not move to the database that takes writes now.");
                    send_error(
                        &mut down.client,
                        &fatal("08006", format!("switchyard: {e}")),
                    )
                    .await;
                    break End::Swap;
                }
                tracing::debug!(%peer, to = %to.primary(), "Session moved to the new primary.");
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
            tracing::warn!(%peer, %encoding, "Closing a mirrored session whose client encoding the proxy cannot read.");
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
            let primary = up.direction.primary();
            tracing::warn!(%peer, %primary, "The primary closed a session's connection without an error.");
            let fields = fatal(
                "08006",
                format!("switchyard: the connection to the {primary} database was lost"),
            );
            send_error(&mut down.client, &fields).await;
        }
        End::ClientClosed
        | End::ClientTerminated
        | End::ServerClosed
        | End::Mediate
        | End::Swap => {}
    }
    if !matches!(end, End::ClientTerminated | End::ServerClosed) {
        // Let the server end the backend cleanly rather than log an unexpected EOF.
        let _ = write_flushed(&mut up.server, b"X\0\0\0\x04").await;
    }
    if let Some(r) = up.route.reader.take() {
        r.close().await;
    }
    let _ = down.client.shutdown().await;
    tracing::debug!(%peer, ?end, "Session closed.");
}

fn set_mediating(flow: &Mutex<Flow>, on: bool) {
    if let Ok(mut f) = flow.lock() {
        f.mediating(on);
    }
}

/// Follows a ParameterStatus (name, value): `standard_conforming_strings` and the client
/// encoding. `mirroring`: `Some(server_utf8)` when the session mirrors. Returns the new
/// client encoding when the session mirrors and the proxy cannot read it: the end of the
/// session (see `End::ClientEncoding`).
fn note_parameter(
    flag: &AtomicBool,
    text: &ClientText,
    mirroring: Option<bool>,
    body: &[u8],
) -> Option<String> {
    let mut parts = body.split(|&b| b == 0);
    let name = parts.next()?;
    let value = parts.next()?;
    if name == b"standard_conforming_strings" {
        flag.store(value != b"off", Ordering::Relaxed);
    } else if name == b"client_encoding" {
        let value = String::from_utf8_lossy(value);
        match ClientText::index_of(&value, mirroring.unwrap_or(true)) {
            Some(i) => text.set(i),
            None if mirroring.is_some() => return Some(value.into_owned()),
            None => {}
        }
    }
    None
}

/// PostgreSQL reports the encoding as `UTF8`; clients may spell it otherwise.
pub(super) fn is_utf8_encoding(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"UTF8") || name.eq_ignore_ascii_case(b"UTF-8")
}

/// The proxy can read the session's text while it mirrors (see `text::ClientText`).
pub(super) fn client_encoding_ok(client: &str, server_utf8: bool) -> bool {
    ClientText::index_of(client, server_utf8).is_some()
}

/// What a session that mirrors in an encoding the proxy cannot read is told.
pub(super) fn encoding_refused(encoding: &str) -> crate::protocol::backend::ErrorFields {
    fatal(
        "0A000",
        format!(
            "switchyard: dual writes cannot read client_encoding {encoding} (statements and \
             row images would not reach the new database as the old one reads them); use \
             UTF8, a LATIN/WIN/ISO_8859 code page, KOI8R/U, EUC_JP, SJIS, EUC_KR, UHC, BIG5, \
             GBK, EUC_CN or GB18030, or SQL_ASCII over a UTF8 database"
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
