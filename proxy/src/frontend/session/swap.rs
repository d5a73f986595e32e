//! Moves a session to the other database when the cutover moves writes: between two of its
//! transactions, the session gets a connection to the new primary with its settings and
//! named prepared statements, its dual writes run the other way, and cancel requests reach
//! the new server process. The client sees nothing (its next request is answered there).

use super::downstream::Downstream;
use super::reader::Reader;
use super::upstream::Upstream;
use super::End;
use crate::backend::connect;
use crate::cancel::CancelTarget;
use crate::mirror::txn::MirrorSession;
use crate::shadow::ShadowTap;
use crate::shared::Shared;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use switchyard_core::direction::Direction;
use switchyard_core::tls_stream::write_flushed;
use tokio::io::AsyncWrite;

/// Where a session starts, and what moving it needs: its client-facing cancel key and
/// startup parameters.
pub struct Place {
    /// The database its first connection went to.
    pub direction: Direction,
    pub cancel: crate::cancel::SessionKey,
    /// Startup parameters the primary connection was opened with.
    pub params: Vec<(String, String)>,
}

/// Moves the session to `to`'s primary. On error the session ends: the client is told why
/// and nothing of its next request ran anywhere.
pub(super) async fn swap<R, W>(
    shared: &Shared,
    place: &mut Place,
    to: Direction,
    up: &mut Upstream<'_, R>,
    down: &mut Downstream<'_, W>,
    mirror_session: &mut Option<MirrorSession>,
) -> Result<(), String>
where
    W: AsyncWrite + Unpin,
{
    if to == up.direction {
        // Old detached (done): same primary, no dual writes from here on.
        if let Some(ms) = mirror_session.as_mut() {
            if ms.txn.open {
                ms.finish(false).await;
            }
        }
        *mirror_session = None;
        up.mirror = None;
        up.shadow = None;
        up.route.primary_new = true;
        return Ok(());
    }
    let db = to.primary();
    let b = connect(db, shared.dsn(db), &place.params, &shared.connect_options())
        .await
        .map_err(|e| format!("connecting to the {db} database, which takes writes now: {e}"))?;
    let (pid, key, cancel_to, params) =
        (b.pid, b.key.clone(), b.cancel_to.clone(), b.params.clone());
    let mut conn = Reader::from_conn(b.stream, b.read_buf, shared.config.max_message_size);
    conn.apply(&up.route.settings.replay()).await?;
    for e in conn.run_each(&up.route.carry.statements()).await? {
        tracing::warn!(error = %e, to = %db, "A moved session's setting, prepared statement or LISTEN failed there; the session goes on without it.");
    }
    // Every named statement the client prepared, as it sent it: its Binds must find them.
    let mut parses = BytesMut::new();
    for raw in up.route.parses.values() {
        parses.extend_from_slice(raw);
    }
    if !parses.is_empty() {
        if let Err(e) = conn.run_own(&parses).await {
            tracing::warn!(error = %e, to = %db, "A prepared statement of a moved session failed there; its next use fails as it would.");
        }
    }
    let (stream, buf) = conn.into_parts();
    let (r, w) = stream.into_split();
    let mut previous = std::mem::replace(&mut up.server, w);
    down.server = r;
    down.buf = buf;
    // The previous primary ends the backend cleanly rather than log an unexpected EOF.
    let _ = write_flushed(&mut previous, b"X\0\0\0\x04").await;
    let target = CancelTarget {
        to: cancel_to,
        pid,
        key,
    };
    shared.cancel.set(place.cancel, vec![target.clone()]);
    up.route.cancel = Some((place.cancel, target));
    if let Some(ms) = mirror_session.as_mut() {
        if ms.txn.open {
            ms.finish(false).await;
        }
    }
    let mirror = shared.session_mirror(to);
    *mirror_session = mirror.clone().map(MirrorSession::new);
    up.mirror = mirror;
    up.shadow = match to {
        // Shadow reads compare old with new; with new the primary there is nothing to add.
        Direction::NewToOld => None,
        Direction::OldToNew => shared.shadow.clone().map(|s| ShadowTap::new(s, &params)),
    };
    up.route.primary_new = to == Direction::NewToOld;
    if let Some(reader) = up.route.reader.take() {
        reader.close().await;
    }
    up.conforming_strings.store(
        !params
            .iter()
            .any(|(k, v)| k == "standard_conforming_strings" && v == "off"),
        Ordering::Relaxed,
    );
    up.direction = to;
    metrics::counter!(crate::metrics::SESSIONS_MOVED_TOTAL, "to" => db.to_string()).increment(1);
    Ok(())
}

/// Whether and when the session's client→primary pump stops for a cutover's write flip.
impl<R> Upstream<'_, R> {
    /// The session is between transactions with nothing in flight: the only point where it
    /// may hold at a write pause or move.
    pub(super) fn at_boundary(&self) -> bool {
        !self.batch_open && self.flow.lock().map(|f| f.idle()).unwrap_or(false)
    }

    /// Whether a request about to start may have to hold or move (two atomic reads, so the
    /// pumps can ask before every read).
    pub(super) fn may_hold_or_move(&self) -> bool {
        let live = &self.shared.cutover;
        self.mirror.is_some()
            && (live.gate.is_closed() || live.direction() != self.direction || live.detached())
    }

    /// The session must move (or drop its dual writes, old being detached).
    pub(super) fn must_move(&self) -> bool {
        let live = &self.shared.cutover;
        live.direction() != self.direction || (live.detached() && self.mirror.is_some())
    }

    /// What a session does at a boundary with a request waiting: hold while a write flip
    /// pauses, then move if writes now go to the other database. A session with temporary
    /// objects moves too (they are lost): writing on two primaries at once is worse, and the
    /// flip does not start while such a session exists.
    pub(super) async fn at_request(&self) -> Option<End> {
        let live = &self.shared.cutover;
        if live.gate.is_closed() {
            live.gate
                .pass(self.shared.config.cutover.flip_timeout() * 2)
                .await;
        }
        self.must_move().then_some(End::Swap)
    }
}
