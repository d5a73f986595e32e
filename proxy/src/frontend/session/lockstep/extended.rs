//! An extended-protocol batch through its Sync. Parse, Bind, Describe and Close go to the
//! primary untouched; an Execute is handled by its portal's plan.

use super::expect::{Expect, Sink};
use super::{rejected, Mediation};
use crate::frontend::session::End;
use crate::mirror::plan::{Plan, TxnOp};
use crate::protocol::backend::error_response;
use crate::protocol::frontend::{FrontendMessage, Target};
use crate::protocol::{Frame, ProtocolError};
use switchyard_core::capture::{note_statement_sql, refill_sql};
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn extended(&mut self, frame: Frame) -> Result<(), End> {
        if frame.tag() == b'P' {
            return self.parse(frame);
        }
        let msg = FrontendMessage::decode(&frame).map_err(End::ClientProtocol)?;
        match msg {
            FrontendMessage::Bind(_) => {
                self.up.note_bind(&frame);
                self.send(frame.raw());
                self.expect.push(Expect::Relay);
            }
            FrontendMessage::Describe { target, .. } => {
                self.send(frame.raw());
                self.expect.push(Expect::Describe {
                    statement: target == Target::Statement,
                });
            }
            FrontendMessage::Execute { portal, .. } => self.execute(frame, &portal).await?,
            FrontendMessage::Close { .. } => {
                self.up.note_close(&frame);
                self.send(frame.raw());
                self.expect.push(Expect::Relay);
            }
            FrontendMessage::Flush => {
                self.send(frame.raw());
                self.settle().await?;
                self.drained().await?;
                self.flush_all().await?;
            }
            FrontendMessage::FunctionCall(call)
                if self.ms.mirror.config.strict
                    && crate::frontend::session::writes_large_object(&call) =>
            {
                error_response(
                    &mut self.out,
                    &rejected("large objects cannot be captured for the new database (mirror.strict = true)"),
                );
                self.error_seen = true;
                // A FunctionCall is answered by its own ReadyForQuery.
                super::ready(&mut self.out, self.status);
            }
            _ => {
                // Copy messages do not belong in a batch the proxy mediates; pass them on and
                // let the server judge.
                self.send(frame.raw());
            }
        }
        Ok(())
    }

    /// A Parse: its statement is text in the session's client encoding.
    fn parse(&mut self, frame: Frame) -> Result<(), End> {
        let body = frame.body();
        let mut parts = body.splitn(3, |&b| b == 0);
        let (Some(name), Some(query), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(End::ClientProtocol(ProtocolError::malformed(
                "Parse",
                "missing terminator",
            )));
        };
        let text = self.up.client_text;
        // Not text in the session's encoding: the server refuses it (nothing to note).
        if let (Ok(name), Ok(query)) = (text.decode(name), text.decode(query)) {
            let query = self.up.as_server_reads(&query).into_owned();
            self.up.note_parse(&name, &query, frame.raw());
        }
        self.send(frame.raw());
        self.expect.push(Expect::Relay);
        Ok(())
    }

    async fn execute(&mut self, frame: Frame, portal: &str) -> Result<(), End> {
        let plan = self.up.portal_plan(portal);
        self.up.note_execute(&frame);
        let (claimed, reclaim) = self.up.claimed();
        let plan = self.unless_paused(&plan);
        match &*plan {
            Plan::Write | Plan::CopyFrom | Plan::Ddl { .. } if self.status != b'E' => {
                let wrap = self.status == b'I';
                if wrap || !claimed || reclaim {
                    self.claim_before_execute(wrap);
                }
                if let Plan::Ddl { secondary, .. } = &*plan {
                    // Noted first: rows the DDL writes come after it.
                    self.count_mode(secondary, "DDL", true);
                    self.inject(&note_statement_sql(secondary), Sink::Swallow);
                }
                self.send(frame.raw());
                self.expect_execute();
                if let Plan::Ddl {
                    refill: Some(table),
                    ..
                } = &*plan
                {
                    self.inject(&refill_sql(table), Sink::Swallow);
                }
                self.after_write(*plan == Plan::CopyFrom);
            }
            Plan::Txn(op @ (TxnOp::Savepoint(_) | TxnOp::Release(_) | TxnOp::RollbackTo(_)))
                if claimed =>
            {
                // In order with the changes drained before it.
                if let TxnOp::Savepoint(_) = op {
                    self.drain_before_savepoint().await?;
                } else {
                    self.settle().await?;
                    self.drained().await?;
                }
                self.send(frame.raw());
                self.expect_execute();
                if !self.failed {
                    self.ms.savepoint_op(op).await;
                }
            }
            Plan::Txn(TxnOp::Commit { .. }) if claimed => {
                // How the statements before it ended decides the commit.
                self.settle().await?;
                self.drained().await?;
                if !self.failed && self.status == b'T' {
                    self.commit(super::commit::CommitHow::Client {
                        raw: frame.raw().clone(),
                        simple: false,
                    })
                    .await?;
                } else if !self.failed {
                    self.send(frame.raw());
                    self.expect_execute();
                }
            }
            Plan::Txn(TxnOp::Prepare) if claimed => {
                self.settle().await?;
                self.drained().await?;
                if !self.failed && self.status == b'T' && self.before_client_prepare(false).await? {
                    self.send(frame.raw());
                    self.expect_execute();
                    self.settle().await?;
                    self.ms.finish(false).await;
                } else if !self.failed {
                    self.send(frame.raw());
                    self.expect_execute();
                }
            }
            Plan::Txn(TxnOp::Rollback | TxnOp::Commit { .. }) if claimed => {
                // Ends without a lockstep commit (rolled back, or failed before): so does the
                // secondary's transaction.
                self.send(frame.raw());
                self.expect_execute();
                self.ms.finish(false).await;
                self.up.set_claimed(false);
            }
            Plan::Txn(TxnOp::Begin) => {
                self.send(frame.raw());
                self.expect_execute();
                self.status = b'T';
            }
            Plan::Rejected { reason } => {
                self.settle().await?;
                self.drained().await?;
                error_response(&mut self.out, &rejected(reason));
                self.error_seen = true;
                self.failed = true;
            }
            _ => {
                self.send(frame.raw());
                self.expect_execute();
            }
        }
        Ok(())
    }

    /// The results of one Execute, for the client.
    fn expect_execute(&mut self) {
        self.expect.push(Expect::Results {
            sink: Sink::Client,
            until_ready: false,
            injected: false,
        });
    }

    pub(super) async fn sync(&mut self, frame: Frame) -> Result<(), End> {
        self.send(frame.raw());
        self.expect.push(Expect::Ready {
            forward: !self.wrapped,
        });
        self.settle().await?;
        self.drained().await?;
        if self.wrapped {
            self.finish_wrapped().await?;
        }
        self.failed = false;
        Ok(())
    }
}
