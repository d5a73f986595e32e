//! An extended-protocol batch of reads the cutover sends to new (Parse, Bind, Describe,
//! Execute through Sync, every Execute a routable read bound in the batch). Statements the
//! batch binds but parsed earlier are prepared on the session's connection to new first,
//! from the client's own Parse. Once new answered, the batch's Parses also go to old, so
//! old keeps every statement the client believes it has (a later batch may run there).

use super::expect::Expect;
use super::reads::Outcome;
use super::Mediation;
use crate::frontend::session::{parse_hash, End};
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::Frame;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn batch_on_new(&mut self, first: Frame) -> Result<(), End> {
        let mut frames = vec![first];
        while frames.last().map(Frame::tag) != Some(b'S') {
            frames.push(self.client_frame().await?);
        }
        let only_reads = frames
            .iter()
            .all(|f| matches!(f.tag(), b'P' | b'B' | b'D' | b'E' | b'S'));
        let outcome = if self.status != b'I' || self.up.batch_open || !only_reads {
            Outcome::Fallback("state")
        } else {
            self.batch_answer_from_new(&frames).await?
        };
        match outcome {
            Outcome::Answered => {
                metrics::counter!(crate::metrics::READS_ROUTED_TOTAL, "to" => "new").increment(1);
                self.batch_answered(&frames).await
            }
            Outcome::Fallback(why) => {
                metrics::counter!(crate::metrics::READS_ROUTED_TOTAL, "to" => "old", "why" => why)
                    .increment(1);
                self.ready_sent = false;
                for f in frames {
                    match f.tag() {
                        b'S' => return self.sync(f).await,
                        _ if self.failed => {}
                        _ => self.extended(f).await?,
                    }
                }
                Ok(())
            }
        }
    }

    async fn batch_answer_from_new(&mut self, frames: &[Frame]) -> Result<Outcome, End> {
        if let Some(why) = self.reader_ready().await {
            return Ok(Outcome::Fallback(why));
        }
        // What new needs before the batch: statements it binds but does not parse, as the
        // client last parsed them; a statement the batch parses again is closed first.
        let mut own = BytesMut::new();
        let mut parsed_here: Vec<String> = Vec::new();
        for f in frames {
            match FrontendMessage::decode(f) {
                Ok(FrontendMessage::Parse { name, .. }) => {
                    let prepared = self
                        .up
                        .route
                        .reader
                        .as_ref()
                        .is_some_and(|r| r.prepared.contains_key(&name));
                    if !name.is_empty() && prepared {
                        close_statement(&mut own, &name);
                    }
                    parsed_here.push(name);
                }
                Ok(FrontendMessage::Bind(b)) => {
                    let name = b.statement.clone();
                    if parsed_here.contains(&name) {
                        continue;
                    }
                    let Some(raw) = self.up.route.parses.get(&name).cloned() else {
                        return Ok(Outcome::Fallback("unknown_statement"));
                    };
                    let hash = parse_hash(&raw);
                    let Some(reader) = self.up.route.reader.as_mut() else {
                        return Ok(Outcome::Fallback("connect"));
                    };
                    match reader.prepared.get(&name) {
                        Some(h) if *h == hash => {}
                        Some(_) => {
                            close_statement(&mut own, &name);
                            own.extend_from_slice(&raw);
                            reader.prepared.insert(name.clone(), hash);
                        }
                        None => {
                            own.extend_from_slice(&raw);
                            reader.prepared.insert(name.clone(), hash);
                        }
                    }
                    parsed_here.push(name);
                }
                Ok(_) => {}
                Err(_) => return Ok(Outcome::Fallback("malformed")),
            }
        }
        if !own.is_empty() {
            let Some(reader) = self.up.route.reader.as_mut() else {
                return Ok(Outcome::Fallback("connect"));
            };
            if let Err(e) = reader.run_own(&own).await {
                tracing::debug!(error = %e, "Preparing a statement on new failed; the batch runs on old.");
                self.drop_reader().await;
                return Ok(Outcome::Fallback("prepare"));
            }
        }
        let mut batch = BytesMut::new();
        for f in frames {
            batch.extend_from_slice(f.raw());
        }
        let Some(reader) = self.up.route.reader.as_mut() else {
            return Ok(Outcome::Fallback("connect"));
        };
        if reader.send(&batch).await.is_err() {
            self.drop_reader().await;
            return Ok(Outcome::Fallback("io"));
        }
        self.cancels_to_new(true);
        let outcome = self.relay_from_new().await;
        self.cancels_to_new(false);
        let outcome = outcome?;
        match outcome {
            Outcome::Answered => {
                // The batch's own Parses now exist on new as the client sent them.
                if let Some(reader) = self.up.route.reader.as_mut() {
                    for f in frames.iter().filter(|f| f.tag() == b'P') {
                        if let Ok(FrontendMessage::Parse { name, .. }) = FrontendMessage::decode(f)
                        {
                            if !name.is_empty() {
                                reader.prepared.insert(name, parse_hash(f.raw()));
                            }
                        }
                    }
                }
            }
            // What the batch left prepared there is unknown: start over with a new
            // connection next time.
            Outcome::Fallback(_) => self.drop_reader().await,
        }
        Ok(outcome)
    }

    /// After new answered: the bookkeeping the batch would have had on old, and its Parses
    /// run there too (their answers are not the client's: it has new's).
    async fn batch_answered(&mut self, frames: &[Frame]) -> Result<(), End> {
        let mut parses = 0;
        for f in frames {
            match FrontendMessage::decode(f) {
                Ok(FrontendMessage::Parse { name, query, .. }) => {
                    let query = self.up.as_server_reads(&query).into_owned();
                    self.up.note_parse(&name, &query, f.raw());
                    let classes = self.up.classify(&query);
                    if let Some(tap) = self.up.shadow_tap() {
                        tap.parse(f, &classes);
                    }
                    self.send(f.raw());
                    self.expect.push(Expect::Swallow);
                    parses += 1;
                }
                Ok(FrontendMessage::Bind(_)) => self.up.note_bind(f),
                Ok(FrontendMessage::Execute { .. }) => {
                    self.up.note_execute(f);
                    // Sampled like any read, so a shape new answers differently is caught.
                    if let Some(tap) = self.up.shadow_tap() {
                        tap.execute(f, || true);
                    }
                }
                _ => {}
            }
        }
        if parses > 0 {
            self.send(b"S\0\0\0\x04");
            self.expect.push(Expect::Ready { forward: false });
            self.settle().await?;
            if let Some(e) = self.swallowed.take() {
                tracing::warn!(sqlstate = e.code(), message = e.message(), "A statement new prepared failed on old; a later use of it there will fail the same way.");
            }
            self.error_seen = false;
        }
        Ok(())
    }
}

fn close_statement(out: &mut BytesMut, name: &str) {
    crate::protocol::buf_public::tagged(out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(name.as_bytes());
        b.put_u8(0);
    });
}
