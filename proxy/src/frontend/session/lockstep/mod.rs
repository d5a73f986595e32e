//! Requests the proxy handles itself because they write (dual writes). The statements go to
//! the primary as the client wrote them; the primary's capture triggers record every row
//! change. The proxy steps in at transaction boundaries:
//! - it *claims* a transaction before its first write (`SET LOCAL switchyard.capture =
//!   lockstep`, wrapped in a BEGIN of its own when the client is in autocommit), so the
//!   changes wait in the primary's lockstep table;
//! - it notes DDL at its place among the changes, to mirror it as text;
//! - at commit it drains the changes, applies them on the secondary in one transaction,
//!   prepares it, commits the primary, then commits the prepared one (`commit`).
//!
//! The pumps hand over only when every earlier request was answered, so the primary's
//! answers from here on belong to what this module sends; `expect` says what to do with
//! each.

mod commit;
mod drain;
mod expect;
mod extended;
mod inject;
mod multi;
mod reads;
mod reads_ext;
mod simple;
mod wire;

use super::{ClientText, Downstream, End, Upstream};
use crate::mirror::plan::Plan;
use crate::mirror::txn::MirrorSession;
use crate::protocol::backend::ErrorFields;
use crate::protocol::buf_public::tagged;
use bytes::{BufMut, Bytes, BytesMut};
use expect::Expectations;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

pub(super) struct Mediation<'m, 'a, R, W> {
    up: &'m mut Upstream<'a, R>,
    down: &'m mut Downstream<'a, W>,
    ms: &'m mut MirrorSession,
    /// Bound for the client.
    out: BytesMut,
    /// Bound for the primary.
    to_primary: BytesMut,
    expect: Expectations,
    /// The primary's transaction status as the mediator knows it.
    status: u8,
    /// An error ended the current extended batch: skip to Sync.
    failed: bool,
    /// The proxy opened the transaction around the client's autocommit statement.
    wrapped: bool,
    /// An error reached the client in this request.
    error_seen: bool,
    /// CommandCompletes waiting for the proxy's own commit.
    held: Vec<Bytes>,
    /// Rows of the proxy's own query (a `Rows` sink).
    rows: Vec<Vec<Option<Bytes>>>,
    /// The error an injected statement got.
    swallowed: Option<ErrorFields>,
    /// A drain was sent; its rows are applied after the next `settle`.
    draining: bool,
    /// The queued drain reads the rows as base64 of UTF-8 (the session's encoding is not).
    drain_base64: bool,
    /// The ReadyForQuery of the current Query was already written.
    ready_sent: bool,
    /// The request is a simple-protocol Query (the proxy's statements go as Queries too).
    in_query: bool,
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
        expect: Expectations::default(),
        status,
        failed: false,
        wrapped: false,
        error_seen: false,
        held: Vec::new(),
        rows: Vec::new(),
        swallowed: None,
        draining: false,
        drain_base64: false,
        ready_sent: false,
        in_query: false,
        max,
    };
    let result = m.run().await;
    // What the mediator took is not part of the next batch the pump scans.
    m.up.route.end_batch();
    let flushed = m.flush_all().await;
    m.up.set_txn_status(m.status);
    crate::metrics::hot().request_duration[crate::classify::StatementClass::Write.index()]
        .record(started.elapsed().as_secs_f64());
    result.and(flushed)
}

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Result<(), End> {
        if self.status == b'I' && self.ms.txn.open {
            // The primary's transaction ended without the proxy (the session's state says
            // so): the secondary's must not outlive it.
            self.ms.finish(false).await;
        }
        if self.up.batch_open {
            // Part of this batch already went through the passthrough; a Sync of our own
            // separates its answers from what this module sends next.
            self.to_primary.put_slice(b"S\0\0\0\x04");
            self.expect.push(expect::Expect::Results {
                sink: expect::Sink::Client,
                until_ready: true,
                injected: false,
            });
            self.expect.push(expect::Expect::Ready { forward: false });
            self.settle().await?;
            self.up.batch_open = false;
            self.failed = self.error_seen;
        }
        let mut frame = self.client_frame().await?;
        let routed = std::mem::take(&mut self.up.route.pending);
        if frame.tag() == b'Q' {
            self.in_query = true;
            if routed {
                return self.read_on_new(frame).await;
            }
            return self.query(frame).await;
        }
        if routed {
            return self.batch_on_new(frame).await;
        }
        loop {
            match frame.tag() {
                b'S' => return self.sync(frame).await,
                b'X' => return Err(End::ClientTerminated),
                // A Query inside an unfinished batch: the server takes it as the batch's
                // end; so does the proxy.
                b'Q' => {
                    self.in_query = true;
                    return self.query(frame).await;
                }
                _ if self.failed => {}
                _ => self.extended(frame).await?,
            }
            frame = self.client_frame().await?;
        }
    }

    /// `plan`, or a refusal when it writes and this instance lost the cutover control table
    /// for longer than its lease (it may be running a stale epoch).
    fn unless_paused<'p>(&self, plan: &'p Plan) -> std::borrow::Cow<'p, Plan> {
        if matches!(plan, Plan::Write | Plan::CopyFrom | Plan::Ddl { .. })
            && !self.up.shared.cutover.control_ok()
        {
            std::borrow::Cow::Owned(Plan::Rejected {
                reason: "this proxy instance lost the cutover control table on the old \
                         database for longer than its lease, so it takes no writes until \
                         it reaches it again (another instance may have moved the flag)",
            })
        } else {
            std::borrow::Cow::Borrowed(plan)
        }
    }

    /// The claim is in place for the rest of the transaction.
    fn claimed_now(&mut self) {
        self.up.set_claimed(true);
    }
}

fn ready(out: &mut BytesMut, status: u8) {
    tagged(out, b'Z', |b| b.put_u8(status));
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    tagged(out, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

/// A Query for `sql`, in the session's client encoding.
fn query_frame(sql: &str, text: &ClientText) -> Bytes {
    let sql = text.encode(sql);
    let mut b = BytesMut::with_capacity(sql.len() + 6);
    tagged(&mut b, b'Q', |b| {
        b.put_slice(&sql);
        b.put_u8(0);
    });
    b.freeze()
}

fn rejected(reason: &str) -> ErrorFields {
    ErrorFields::new("ERROR", "0A000", format!("switchyard: {reason}"))
}

/// Test hook (only with the `failpoints` feature, see `crate::failpoint`): kills the
/// process at that step of a commit, so tests can prove recovery from a crash there.
fn failpoint(name: &str) {
    crate::failpoint::abort_at(name);
}
