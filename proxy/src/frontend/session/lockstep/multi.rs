//! A simple-protocol string of several statements, run one by one with PostgreSQL's rules
//! for such strings: they share one implicit transaction, which a BEGIN among them turns
//! into an ordinary one and a COMMIT or ROLLBACK ends (statements after it start another);
//! the implicit transaction commits at the end of the string; an error skips the rest (and
//! rolls back an implicit transaction). Running them one by one lets the proxy claim the
//! transaction before its first write and commit it with the lockstep protocol wherever the
//! string commits.

use super::{command_complete, query_frame, ready, Mediation};
use crate::frontend::session::End;
use crate::mirror::plan::{Piece, Plan, TxnOp};
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn multi(&mut self, pieces: &[Piece]) -> Result<(), End> {
        // The proxy opened the string's implicit transaction (a BEGIN of its own).
        let mut implicit = false;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let raw = query_frame(&piece.sql, self.up.client_text);
            self.up.follow(&piece.plan);
            match &piece.plan {
                Plan::Txn(TxnOp::Begin) if implicit => {
                    // The implicit transaction becomes an ordinary one, open after the string.
                    implicit = false;
                    self.wrapped = false;
                    command_complete(&mut self.out, "BEGIN");
                }
                Plan::Txn(TxnOp::Commit { .. }) if implicit => {
                    implicit = false;
                    self.wrapped = false;
                    let (claimed, _) = self.up.claimed();
                    if claimed {
                        self.commit(super::commit::CommitHow::Client { raw, simple: true })
                            .await?;
                    } else {
                        self.pass(raw, false).await?;
                    }
                }
                Plan::Txn(_) => {
                    implicit = false;
                    self.wrapped = false;
                    self.statement(raw, &piece.sql, &piece.plan, false).await?;
                }
                plan => {
                    if self.status == b'I' {
                        self.inject_query("BEGIN");
                        self.status = b'T';
                        implicit = true;
                        self.wrapped = true;
                    }
                    // PostgreSQL commits the implicit transaction before the last
                    // statement's CommandComplete.
                    self.statement(raw, &piece.sql, plan, implicit && last)
                        .await?;
                }
            }
            // `!error_seen` with old's transaction failed: a statement of the proxy's own
            // failed (the implicit transaction ends below, saying why). The rest of the
            // string must not run.
            if self.error_seen || self.ready_sent || self.status == b'E' {
                break;
            }
        }
        if implicit {
            let (claimed, _) = self.up.claimed();
            if claimed || self.error_seen || self.status == b'E' {
                self.finish_wrapped().await?;
            } else {
                // Nothing was claimed: a plain commit.
                self.wrapped = false;
                if self.run_injected("COMMIT").await? {
                    self.status = b'I';
                    for c in std::mem::take(&mut self.held) {
                        self.out.extend_from_slice(&c);
                    }
                } else if let Some(e) = self.swallowed.take() {
                    crate::protocol::backend::error_response(&mut self.out, &e);
                    self.held.clear();
                    self.status = b'I';
                }
                ready(&mut self.out, self.status);
                self.ready_sent = true;
            }
        }
        Ok(())
    }
}
