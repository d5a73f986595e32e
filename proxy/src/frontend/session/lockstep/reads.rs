//! A read the cutover sends to new: the client's Query goes to the session's connection to
//! new and the answer comes back as new gave it. If new cannot answer before anything was
//! forwarded (no connection, settings refused, an error such as 25006 from a statement that
//! turned out to write), the Query runs on old instead, and the client sees no difference.

use super::Mediation;
use crate::cutover::types::Covers;
use crate::frontend::session::{End, Reader};
use crate::protocol::backend::{error_response, BackendMessage, ErrorFields};
use crate::protocol::Frame;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// Forward the answer in pieces of about this much, not all at once.
const FLUSH_AT: usize = 64 * 1024;

/// How a routed read ended.
pub(super) enum Outcome {
    Answered,
    /// Nothing reached the client: run it on old.
    Fallback(&'static str),
}

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn read_on_new(&mut self, frame: Frame) -> Result<(), End> {
        if self.status != b'I' || self.up.batch_open {
            return self.query(frame).await;
        }
        let body = &frame.raw()[Frame::HEADER..];
        let sql = self
            .up
            .client_text
            .decode_lossy(body.strip_suffix(&[0]).unwrap_or(body))
            .into_owned();
        self.up.note_query(&sql);
        // Compared on both sides like any sampled read: a shape whose comparison confirms
        // a mismatch stops reading from new.
        let classes = self.up.classify(&sql);
        if let Some(tap) = self.up.shadow_tap() {
            tap.query(&sql, &classes, || true);
        }
        match self.answer_from_new(&frame).await? {
            Outcome::Answered => {
                metrics::counter!(crate::metrics::READS_ROUTED_TOTAL, "to" => "new").increment(1);
                Ok(())
            }
            Outcome::Fallback(why) => {
                metrics::counter!(crate::metrics::READS_ROUTED_TOTAL, "to" => "old", "why" => why)
                    .increment(1);
                self.ready_sent = false;
                self.statement(
                    frame.raw().clone(),
                    &sql,
                    &crate::mirror::plan::Plan::Pass,
                    false,
                )
                .await?;
                if !self.ready_sent {
                    super::ready(&mut self.out, self.status);
                }
                Ok(())
            }
        }
    }

    async fn answer_from_new(&mut self, frame: &Frame) -> Result<Outcome, End> {
        if let Some(why) = self.reader_ready().await {
            return Ok(Outcome::Fallback(why));
        }
        let Some(reader) = self.up.route.reader.as_mut() else {
            return Ok(Outcome::Fallback("connect"));
        };
        if reader.send(frame.raw()).await.is_err() {
            self.drop_reader().await;
            return Ok(Outcome::Fallback("io"));
        }
        self.cancels_to_new(true);
        let outcome = self.relay_from_new().await;
        self.cancels_to_new(false);
        outcome
    }

    /// Points the client's CancelRequests at new's connection too while it answers (`on`),
    /// and at the primary alone after.
    pub(super) fn cancels_to_new(&self, on: bool) {
        let Some((k, primary)) = &self.up.route.cancel else {
            return;
        };
        let mut targets = vec![primary.clone()];
        if on {
            targets.extend(self.up.route.reader.as_ref().and_then(|r| r.cancel.clone()));
        }
        self.up.shared.cancel.set(*k, targets);
    }

    /// Opens the session's connection to new if needed and brings its settings up to date;
    /// the reason to fall back to old if that failed.
    pub(super) async fn reader_ready(&mut self) -> Option<&'static str> {
        let route = &mut self.up.route;
        if route.reader.is_none() {
            match Reader::open(self.up.shared, &route.startup).await {
                Ok(r) => route.reader = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot open a connection to new for routed reads; they stay on old for now.");
                    route.connect_failed();
                    return Some("connect");
                }
            }
        }
        let settings = route.settings.replay();
        let reader = route.reader.as_mut()?;
        if let Err(e) = reader.apply(&settings).await {
            tracing::warn!(error = %e, "A session's settings could not be replayed on new; its read runs on old.");
            self.drop_reader().await;
            return Some("settings");
        }
        None
    }

    /// Passes new's answer to the client through its ReadyForQuery. What comes before the
    /// first row or completion is held, so an error there (or a type old would name
    /// differently) can still fall back to old unseen.
    pub(super) async fn relay_from_new(&mut self) -> Result<Outcome, End> {
        let mut held = BytesMut::new();
        let mut forwarded = false;
        let mut failed = false;
        let mut foreign_types = false;
        loop {
            let Some(reader) = self.up.route.reader.as_mut() else {
                return Ok(Outcome::Fallback("io"));
            };
            let f = match reader.frame().await {
                Ok(f) => f,
                Err(e) => {
                    self.drop_reader().await;
                    if !forwarded {
                        return Ok(Outcome::Fallback("io"));
                    }
                    tracing::warn!(error = %e, "New failed in the middle of a routed read.");
                    error_response(
                        &mut self.out,
                        &ErrorFields::new(
                            "ERROR",
                            "08006",
                            format!("switchyard: the new database failed during a read: {e}"),
                        ),
                    );
                    super::ready(&mut self.out, b'I');
                    self.ready_sent = true;
                    self.error_seen = true;
                    return Ok(Outcome::Answered);
                }
            };
            match f.tag() {
                b'Z' => {
                    if failed {
                        return Ok(Outcome::Fallback("error"));
                    }
                    if foreign_types {
                        return Ok(Outcome::Fallback("user_types"));
                    }
                    self.out.extend_from_slice(&held);
                    self.out.extend_from_slice(f.raw());
                    self.ready_sent = true;
                    return Ok(Outcome::Answered);
                }
                b'E' if !forwarded => {
                    // Old is the source of truth: an error before anything was forwarded
                    // (25006: the statement writes after all; or new lacks something) is
                    // old's to give, or not. A cancel (the client's, or its statement
                    // timeout) is the client's answer, not new's failure: running it again
                    // on old would undo it.
                    let decoded = BackendMessage::decode(&f);
                    if let Ok(BackendMessage::ErrorResponse(e)) = &decoded {
                        if e.code() == "57014" {
                            forwarded = true;
                            self.out.extend_from_slice(&held);
                            held.clear();
                            self.out.extend_from_slice(f.raw());
                            self.error_seen = true;
                            continue;
                        }
                        tracing::debug!(
                            sqlstate = e.code(),
                            message = e.message(),
                            "A routed read failed on new; it runs on old."
                        );
                    }
                    failed = true;
                }
                // A read changes no parameter; new's own reports are not the session's.
                b'S' | b'A' => {}
                b'T' | b't' if !forwarded && !self.types_alike(&f).await => {
                    // A type of the database's own (enum, domain, composite) has another
                    // OID on new: a client that knows it by old's OID would misread it.
                    foreign_types = true;
                }
                // Parse/Bind/Close complete, descriptions, notices: held.
                b'1' | b'2' | b'3' | b't' | b'n' | b'T' | b'N' if !forwarded => {
                    held.extend_from_slice(f.raw())
                }
                _ if foreign_types || failed => {}
                _ => {
                    if !forwarded {
                        forwarded = true;
                        self.out.extend_from_slice(&held);
                        held.clear();
                    }
                    if f.tag() == b'E' {
                        self.error_seen = true;
                    }
                    self.out.extend_from_slice(f.raw());
                    if self.out.len() >= FLUSH_AT {
                        self.flush_client().await?;
                    }
                }
            }
        }
    }

    /// Whether every user type a description names has the same OID on old and new.
    async fn types_alike(&self, f: &Frame) -> bool {
        let oids = user_types(f);
        if oids.is_empty() {
            return true;
        }
        let shared = self.up.shared;
        let types = &shared.cutover.types;
        match types.covers(&oids) {
            Covers::Yes => true,
            Covers::No => false,
            Covers::NoRefresh => {
                let refresh = async {
                    let old = shared.cutover_control.client().await.ok()?;
                    let new = shared.new_control.client().await.ok()?;
                    types.refresh(&old, &new).await.ok()
                };
                if tokio::time::timeout(TYPES_WITHIN, refresh)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    tracing::debug!("The user types of old and new could not be compared.");
                }
                types.covers(&oids) == Covers::Yes
            }
        }
    }

    pub(super) async fn drop_reader(&mut self) {
        if let Some(r) = self.up.route.reader.take() {
            r.close().await;
        }
    }
}

/// OIDs below this are PostgreSQL's own, the same in every database of a version.
const FIRST_NORMAL_OID: u32 = 16384;

/// How long a read waits for old's and new's user types to be compared.
const TYPES_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The types created in the database (whose OIDs may differ between old and new) that a
/// RowDescription (or ParameterDescription) names.
fn user_types(f: &Frame) -> Vec<u32> {
    let body = f.body();
    let mut oids = Vec::new();
    let Some(n) = body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return oids;
    };
    let mut rest = &body[2..];
    if f.tag() == b't' {
        oids.extend(
            rest.chunks_exact(4)
                .take(n as usize)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .filter(|&o| o >= FIRST_NORMAL_OID),
        );
        return oids;
    }
    for _ in 0..n {
        // name\0, table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            break;
        };
        let Some(fixed) = rest.get(nul + 1..nul + 19) else {
            break;
        };
        let ty = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        if ty >= FIRST_NORMAL_OID {
            oids.push(ty);
        }
        rest = &rest[nul + 19..];
    }
    oids
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn row_description(types: &[u32]) -> Frame {
        let mut b = BytesMut::new();
        crate::protocol::buf_public::tagged(&mut b, b'T', |b| {
            b.put_u16(types.len() as u16);
            for (i, ty) in types.iter().enumerate() {
                b.put_slice(format!("c{i}").as_bytes());
                b.put_u8(0);
                b.put_u32(16400);
                b.put_i16(1);
                b.put_u32(*ty);
                b.put_i16(-1);
                b.put_i32(-1);
                b.put_i16(0);
            }
        });
        Frame::from_encoded(b.freeze())
    }

    #[test]
    fn built_in_column_types_are_the_same_on_both_sides() {
        assert!(user_types(&row_description(&[23, 25, 1184])).is_empty());
        assert_eq!(user_types(&row_description(&[23, 16385])), vec![16385]);
        assert!(user_types(&row_description(&[])).is_empty());
        let mut b = BytesMut::new();
        crate::protocol::buf_public::tagged(&mut b, b't', |b| {
            b.put_u16(2);
            b.put_u32(23);
            b.put_u32(16390);
        });
        assert_eq!(user_types(&Frame::from_encoded(b.freeze())), vec![16390]);
    }
}
