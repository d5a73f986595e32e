//! A simple-protocol Query: one statement, or several run one by one (`multi`).

use super::expect::{Expect, Sink};
use super::{ready, rejected, Mediation};
use crate::frontend::session::End;
use crate::mirror::plan::{Plan, TxnOp};
use crate::protocol::backend::error_response;
use crate::protocol::Frame;
use bytes::Bytes;
use switchyard_core::capture::{note_statement_sql, refill_sql};
use tokio::io::{AsyncRead, AsyncWrite};

/// Why an autocommit statement that ran on old was rolled back after all.
const CAPTURE_FAILED: &str = "switchyard: the changes of this statement could not be captured for the new database; it was rolled back on both databases";
/// The same inside the client's transaction, which can then only roll back.
const CAPTURE_FAILED_IN_TRANSACTION: &str = "switchyard: the changes of this statement could not be captured for the new database; the transaction cannot commit";

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn query(&mut self, frame: Frame) -> Result<(), End> {
        let body = &frame.raw()[Frame::HEADER..];
        let text = self.up.client_text;
        let sql = match text.decode(body.strip_suffix(&[0]).unwrap_or(body)) {
            Ok(sql) => sql,
            // Not text in the session's encoding: the server refuses it, with PostgreSQL's
            // own error, and nothing runs.
            Err(_) => {
                self.pass(frame.raw().clone(), false).await?;
                ready(&mut self.out, self.status);
                return Ok(());
            }
        };
        let sql = self.up.as_server_reads(&sql).into_owned();
        self.up.note_query(&sql);
        let plan = self.ms.mirror.plan(&sql);
        self.ready_sent = false;
        if let Plan::Multi(pieces) = &*plan {
            self.multi(pieces).await?;
        } else {
            self.statement(frame.raw().clone(), &sql, &plan, false)
                .await?;
        }
        if !self.ready_sent {
            ready(&mut self.out, self.status);
        }
        Ok(())
    }

    /// One statement as a Query of its own; the ReadyForQuery is left to the caller.
    /// `hold`: its CommandComplete waits for a commit the caller will run.
    pub(super) async fn statement(
        &mut self,
        raw: Bytes,
        sql: &str,
        plan: &Plan,
        hold: bool,
    ) -> Result<(), End> {
        let (claimed, reclaim) = self.up.claimed();
        let plan = &*self.unless_paused(plan);
        match plan {
            Plan::Write | Plan::CopyFrom | Plan::Ddl { .. } if self.status != b'E' => {
                let wrap = self.status == b'I';
                if wrap || !claimed || reclaim {
                    self.claim_before_query(wrap);
                }
                if let Plan::Ddl { secondary, .. } = plan {
                    self.count_mode(sql, "DDL", true);
                    // Noted first, so rows the DDL itself writes (CREATE TABLE AS) come after
                    // it; if the DDL fails, the note is rolled back with it.
                    self.inject_query(&note_statement_sql(secondary));
                }
                self.send(&raw);
                self.expect_query(if wrap || hold {
                    Sink::HoldComplete
                } else {
                    Sink::Client
                });
                if let Plan::Ddl {
                    refill: Some(table),
                    ..
                } = plan
                {
                    // The rewrite filled the rows with old's values: they follow as images.
                    self.inject_query(&refill_sql(table));
                }
                self.after_write(*plan == Plan::CopyFrom);
                self.settle().await?;
                self.drained().await?;
                if !self.wrapped && !self.error_seen && self.status == b'E' {
                    // The drain behind the write failed: the client hears why now, not
                    // "transaction aborted" from its next statement.
                    self.capture_failed_in_transaction();
                }
                if wrap {
                    self.finish_wrapped().await?;
                }
            }
            Plan::Txn(op @ (TxnOp::Savepoint(_) | TxnOp::Release(_) | TxnOp::RollbackTo(_)))
                if claimed =>
            {
                if let TxnOp::Savepoint(_) = op {
                    self.drain_before_savepoint().await?;
                }
                self.pass(raw, hold).await?;
                if !self.error_seen {
                    self.ms.savepoint_op(op).await;
                }
            }
            Plan::Txn(TxnOp::Commit { .. }) if claimed && self.status == b'T' => {
                self.commit(super::commit::CommitHow::Client { raw, simple: true })
                    .await?;
            }
            Plan::Txn(TxnOp::Prepare) if claimed && self.status == b'T' => {
                if self.before_client_prepare(true).await? {
                    self.pass(raw, hold).await?;
                    self.ms.finish(false).await;
                }
            }
            Plan::Txn(TxnOp::Rollback | TxnOp::Commit { .. } | TxnOp::Prepare) if claimed => {
                // The transaction ends without a lockstep commit (rolled back, or failed
                // before): so does the secondary's.
                self.pass(raw, hold).await?;
                self.ms.finish(false).await;
                self.up.set_claimed(false);
            }
            Plan::Rejected { reason } => {
                error_response(&mut self.out, &rejected(reason));
                self.error_seen = true;
                if self.status != b'I' {
                    // The server must agree that the transaction failed.
                    self.inject_query("SELECT 1/0");
                    self.settle().await?;
                }
            }
            _ => self.pass(raw, hold).await?,
        }
        Ok(())
    }

    /// Forwards a Query and its results.
    pub(super) async fn pass(&mut self, raw: Bytes, hold: bool) -> Result<(), End> {
        self.send(&raw);
        self.expect_query(if hold {
            Sink::HoldComplete
        } else {
            Sink::Client
        });
        self.settle().await
    }

    /// The results of a Query through its ReadyForQuery (which the caller answers).
    pub(super) fn expect_query(&mut self, sink: Sink) {
        self.expect.push(Expect::Results {
            sink,
            until_ready: true,
            injected: false,
        });
        self.expect.push(Expect::Ready { forward: false });
    }

    /// Ends the transaction the proxy opened around an autocommit statement: commits it
    /// (with the lockstep commit protocol) or rolls it back after an error. Answers the
    /// client's ReadyForQuery.
    pub(super) async fn finish_wrapped(&mut self) -> Result<(), End> {
        self.wrapped = false;
        // Failed, and the client was not told: a statement of the proxy's own failed (its
        // reason is in the transaction's record). The write must not look done.
        if !self.error_seen && self.status == b'E' {
            return self.fail_commit_with(true, CAPTURE_FAILED).await;
        }
        if self.error_seen || self.status == b'E' {
            self.run_injected("ROLLBACK").await?;
            self.ms.finish(false).await;
            self.held.clear();
            self.status = b'I';
            self.up.set_claimed(false);
            ready(&mut self.out, b'I');
            self.ready_sent = true;
            return Ok(());
        }
        self.commit(super::commit::CommitHow::Injected).await
    }

    /// A statement of the proxy's own failed in the client's transaction, which old has
    /// now aborted: the client gets the reason as its statement's error.
    pub(super) fn capture_failed_in_transaction(&mut self) {
        let detail = self.failure_detail();
        let fields = crate::protocol::backend::ErrorFields::new(
            "ERROR",
            "XX000",
            CAPTURE_FAILED_IN_TRANSACTION,
        )
        .with(b'D', detail);
        error_response(&mut self.out, &fields);
        self.error_seen = true;
    }

    /// Counts a statement mirrored as text (or not at all), by its fingerprint.
    pub(super) fn count_mode(&self, sql: &str, reason: &str, mirrored: bool) {
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
}
