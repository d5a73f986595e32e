//! The commit of a claimed transaction: drain the primary's captured changes into the
//! secondary's lockstep transaction, PREPARE it there (or record re-sync orders when the
//! secondary failed), COMMIT the primary, then COMMIT PREPARED. A prepared transaction left
//! behind by a crash between the two commits is finished from the primary's
//! `pg_xact_status` (recovery), so the primary's COMMIT is the point of no return.

use super::drain::Drained;
use super::expect::Sink;
use super::{failpoint, ready, Mediation};
use crate::frontend::session::End;
use crate::metrics::MIRROR_RETRY_RECORDS_TOTAL;
use crate::protocol::backend::{error_response, ErrorFields};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use switchyard_core::capture::as_owner_sql;
use switchyard_core::direction::Direction;
use tokio::io::{AsyncRead, AsyncWrite};

const NOT_RECORDED: &str = "switchyard: the new database did not take this transaction's changes and they could not be recorded in the retry log; the transaction was rolled back";
const INTENT_FAILED: &str = "switchyard: the transaction's intent (what lets recovery finish it on the secondary) could not be recorded; the transaction was rolled back on both databases";

/// Who sends the primary's COMMIT.
pub(super) enum CommitHow {
    /// The proxy, for the transaction it opened around an autocommit statement.
    Injected,
    /// The client, as a Query (`simple`) or an extended-protocol Execute.
    Client { raw: Bytes, simple: bool },
}

/// The steps of the commit protocol, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Fire deferred triggers, drain the captured changes into the secondary transaction.
    Drain,
    /// PREPARE TRANSACTION on the secondary (lockstep mode: wait for its applies and
    /// build the intent instead).
    Prepare,
    /// The secondary did not take it all: re-sync orders into the retry log, in the
    /// primary's transaction (or to Kafka, confirmed), before the primary commits;
    /// lockstep mode: the intent, in the primary's transaction.
    Record,
    /// COMMIT on the primary: from here on the outcome is the primary's.
    CommitPrimary,
    /// COMMIT (or ROLLBACK) PREPARED on the secondary, without waiting.
    Finish { committed: bool },
}

impl Phase {
    /// Index into the phase histograms (each phase's time is recorded when the next starts).
    fn metric(self) -> usize {
        match self {
            Phase::Drain => 0,
            Phase::Prepare => 1,
            Phase::Record => 2,
            Phase::CommitPrimary => 3,
            Phase::Finish { .. } => 4,
        }
    }
}

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn commit(&mut self, how: CommitHow) -> Result<(), End> {
        let (simple, injected) = match &how {
            CommitHow::Injected => (true, true),
            CommitHow::Client { simple, .. } => (*simple, false),
        };
        let mut how = Some(how);
        let mut phase = Phase::Drain;
        let mut started = std::time::Instant::now();
        loop {
            tracing::trace!(?phase, "commit");
            let i = phase.metric();
            let now = std::time::Instant::now();
            if i > 0 {
                crate::metrics::hot().commit_phase[i - 1]
                    .record(now.duration_since(started).as_secs_f64());
            }
            started = now;
            phase = match phase {
                Phase::Drain => match self.drain().await? {
                    Drained::Done => Phase::Prepare,
                    Drained::Failed => return self.primary_refused(simple).await,
                },
                Phase::Prepare => {
                    if self.ms.txn.unrecordable.is_some() {
                        return self.fail_commit(simple).await;
                    }
                    if self.ms.txn.events > 0 {
                        if self.ms.mirror.intents_mode() {
                            if let Some((sql, synced)) = self.ms.intent().await {
                                let sql = as_owner_sql(&sql);
                                let (synced, recorded) =
                                    tokio::join!(synced, self.run_injected(&sql));
                                self.ms.intent_synced(synced);
                                if !recorded? {
                                    return self.fail_commit_with(simple, INTENT_FAILED).await;
                                }
                            }
                        } else {
                            self.ms.prepare().await;
                        }
                    }
                    Phase::Record
                }
                Phase::Record => {
                    if self.ms.txn.needs_records()
                        && !self.ms.intent_covers_records()
                        && !self.write_records().await?
                    {
                        return self.fail_commit(simple).await;
                    }
                    failpoint("after-prepare");
                    Phase::CommitPrimary
                }
                Phase::CommitPrimary => {
                    let committed = match how.take() {
                        Some(CommitHow::Client { raw, simple }) => {
                            let before = self.error_seen;
                            self.send(&raw);
                            if simple {
                                self.expect_query(Sink::Client);
                            } else {
                                self.expect.push(super::expect::Expect::Results {
                                    sink: Sink::Client,
                                    until_ready: false,
                                    injected: false,
                                });
                            }
                            self.error_seen = false;
                            self.settle().await?;
                            let ok = !self.error_seen;
                            self.error_seen |= before;
                            ok
                        }
                        _ => {
                            let ok = self.run_injected("COMMIT").await?;
                            if !ok {
                                if let Some(e) = self.swallowed.take() {
                                    error_response(&mut self.out, &e);
                                    self.error_seen = true;
                                }
                            }
                            ok
                        }
                    };
                    failpoint("after-primary-commit");
                    Phase::Finish { committed }
                }
                Phase::Finish { committed } => {
                    let had_ddl = self.ms.txn.had_statements;
                    self.ms.finish(committed).await;
                    if committed
                        && self.ms.mirror.direction == Direction::OldToNew
                        && self.up.shared.cutover.read_your_writes()
                    {
                        // Reads go to new: the client hears of its commit only once new
                        // has it, so its next read (on any instance) sees it. (With new the
                        // primary, reads are where the writes are.)
                        self.ms.wait_finished().await;
                    }
                    self.up.set_claimed(false);
                    if injected {
                        // The client's statement completed only now that it committed.
                        if committed {
                            for c in std::mem::take(&mut self.held) {
                                self.out.extend_from_slice(&c);
                            }
                        }
                        self.held.clear();
                        self.status = b'I';
                        ready(&mut self.out, b'I');
                        self.ready_sent = true;
                    } else if !simple {
                        // The client's Sync reports the status.
                        self.status = b'I';
                    }
                    if had_ddl && committed {
                        self.refresh_routines().await;
                    }
                    return Ok(());
                }
            };
        }
    }

    /// The client prepares its transaction itself (PREPARE TRANSACTION): the outcome is
    /// decided later, possibly by another session. What the secondary holds is dropped and
    /// every change goes as re-sync orders recorded in the transaction, committed (or not)
    /// with it. False when they could not be recorded: the transaction is then rolled back
    /// with the reason.
    pub(super) async fn before_client_prepare(&mut self, simple: bool) -> Result<bool, End> {
        self.up.note_undrained();
        if let Drained::Failed = self.drain().await? {
            self.primary_refused(simple).await?;
            return Ok(false);
        }
        self.ms
            .abandon("the client prepares the transaction itself (PREPARE TRANSACTION)");
        if self.ms.txn.unrecordable.is_some()
            || (self.ms.txn.needs_records() && !self.write_records().await?)
        {
            self.fail_commit(simple).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// DDL committed: functions and procedures may have changed, and with them the plans.
    async fn refresh_routines(&mut self) {
        let mirror = self.ms.mirror.clone();
        if let Ok(c) = mirror.control.client().await {
            if let Ok(true) = mirror.routines.refresh(&c).await {
                mirror.forget_plans();
            }
        }
    }

    /// The primary refused the commit before anything was decided (a deferred constraint
    /// failed when it was checked early, or the capture could not be read): the client gets
    /// the error its COMMIT would have got, and the transaction is rolled back.
    async fn primary_refused(&mut self, simple: bool) -> Result<(), End> {
        let e = self
            .swallowed
            .take()
            .unwrap_or_else(|| ErrorFields::new("ERROR", "XX000", "unreadable error"));
        let theirs = ["23", "40", "P0", "25", "53", "57"]
            .iter()
            .any(|class| e.code().starts_with(class));
        let fields = if theirs {
            e
        } else {
            ErrorFields::new(
                "ERROR",
                "XX000",
                "switchyard: the transaction's captured changes could not be read from the old database; it was rolled back",
            )
            .with(b'D', e.message().to_string())
        };
        self.run_injected("ROLLBACK").await?;
        self.ms.finish(false).await;
        self.up.set_claimed(false);
        self.held.clear();
        self.answer_error(&fields, simple);
        Ok(())
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
                self.swallowed = None;
                self.ms.txn.unrecordable = Some(detail);
                return Ok(false);
            }
        };
        if embedded.is_empty() {
            return Ok(true);
        }
        let Ok(sql) = switchyard_core::retry::embedded_insert_sql(&embedded) else {
            return Ok(false);
        };
        if !self.run_injected(&as_owner_sql(&sql)).await? {
            tracing::error!(
                error = ?self.swallowed.as_ref().map(|e| e.message().to_string()),
                "Writing the retry log on the old database failed."
            );
            return Ok(false);
        }
        let n = embedded.len() as u64;
        mirror
            .status
            .records_embedded
            .fetch_add(n, Ordering::Relaxed);
        metrics::counter!(MIRROR_RETRY_RECORDS_TOTAL, "backend" => "embedded").increment(n);
        Ok(true)
    }

    /// Why the proxy's own work failed: its statement's error, else what made the
    /// transaction's changes unrecordable.
    pub(super) fn failure_detail(&mut self) -> String {
        self.swallowed
            .take()
            .map(|e| e.message().to_string())
            .or_else(|| self.ms.txn.unrecordable.clone())
            .unwrap_or_default()
    }

    /// The transaction cannot commit safely: roll it back and say why.
    async fn fail_commit(&mut self, simple: bool) -> Result<(), End> {
        self.fail_commit_with(simple, NOT_RECORDED).await
    }

    pub(super) async fn fail_commit_with(
        &mut self,
        simple: bool,
        message: &str,
    ) -> Result<(), End> {
        let detail = self.failure_detail();
        self.run_injected("ROLLBACK").await?;
        self.ms.finish(false).await;
        self.up.set_claimed(false);
        self.held.clear();
        self.ms
            .mirror
            .status
            .commits_refused
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::MIRROR_COMMITS_REFUSED_TOTAL).increment(1);
        let fields = ErrorFields::new("ERROR", "XX000", message).with(b'D', detail);
        self.answer_error(&fields, simple);
        Ok(())
    }

    /// Answers the client's COMMIT with `fields`: the transaction is over (rolled back).
    fn answer_error(&mut self, fields: &ErrorFields, simple: bool) {
        error_response(&mut self.out, fields);
        self.error_seen = true;
        self.status = b'I';
        if simple {
            ready(&mut self.out, b'I');
            self.ready_sent = true;
        } else {
            self.failed = true;
        }
    }
}
