//! Statements of the proxy's own on the client's primary connection. In the middle of an
//! extended batch they go through the extended protocol under a statement and portal name
//! of the proxy's (so the client's unnamed ones survive), both closed after each use (so
//! the session's `pg_prepared_statements` shows only its own), ended by Flush, not Sync (the
//! client's Sync ends them); while serving a client's Query, as Queries of their own, so
//! the server is idle (not waiting for a Sync) when the client is.

use super::expect::{Expect, Sink};
use super::Mediation;
use crate::frontend::session::End;
use crate::protocol::buf_public::tagged;
use crate::protocol::frontend::{Bind, FrontendMessage, Target};
use bytes::{BufMut, Bytes, BytesMut};
use switchyard_core::capture::CLAIM_SQL;
use tokio::io::{AsyncRead, AsyncWrite};

/// Name of the statement and portal the proxy uses for its own statements.
const OWN: &str = "__switchyard";

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Queues one statement through the extended protocol; its rows go to `sink`. The
    /// portal is closed first too: after an error, the previous statement's closing Close
    /// was skipped, and its portal lives until the transaction ends.
    pub(super) fn inject(&mut self, sql: &str, sink: Sink) {
        if self.in_query {
            self.send(&super::query_frame(sql, self.up.client_text));
            self.expect.push(Expect::Results {
                sink,
                until_ready: true,
                injected: true,
            });
            self.expect.push(Expect::Ready { forward: false });
            return;
        }
        close_own(&mut self.to_primary);
        // By hand: the statement goes in the session's client encoding.
        let query = self.up.client_text.encode(sql);
        tagged(&mut self.to_primary, b'P', |b| {
            b.put_slice(OWN.as_bytes());
            b.put_u8(0);
            b.put_slice(&query);
            b.put_u8(0);
            b.put_i16(0);
        });
        for msg in [
            FrontendMessage::Bind(Bind {
                portal: OWN.into(),
                statement: OWN.into(),
                param_formats: Vec::new(),
                params: Vec::new(),
                result_formats: Vec::new(),
            }),
            FrontendMessage::Execute {
                portal: OWN.into(),
                max_rows: 0,
            },
        ] {
            msg.encode(&mut self.to_primary);
        }
        // Left prepared, it would show in the session's pg_prepared_statements.
        close_own(&mut self.to_primary);
        for _ in 0..4 {
            self.expect.push(Expect::Swallow);
        }
        self.expect.push(Expect::Results {
            sink,
            until_ready: false,
            injected: true,
        });
        self.expect.push(Expect::Swallow);
        self.expect.push(Expect::Swallow);
    }

    /// Runs one statement of the proxy's own and waits for it; false if it failed (the
    /// error is in `swallowed`). A client error seen before is kept.
    pub(super) async fn run_injected(&mut self, sql: &str) -> Result<bool, End> {
        self.swallowed = None;
        self.inject(sql, Sink::Swallow);
        let error_before = self.error_seen;
        self.settle().await?;
        self.error_seen = error_before;
        Ok(self.swallowed.is_none())
    }

    /// Runs a query of the proxy's own and returns its rows (None if it failed).
    pub(super) async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Option<Vec<Vec<Option<Bytes>>>>, End> {
        self.swallowed = None;
        self.rows.clear();
        self.inject(sql, Sink::Rows);
        let error_before = self.error_seen;
        self.settle().await?;
        self.error_seen = error_before;
        let rows = std::mem::take(&mut self.rows);
        Ok(self.swallowed.is_none().then_some(rows))
    }

    /// Queues a Query of the proxy's own in front of the client's (simple protocol).
    pub(super) fn inject_query(&mut self, sql: &str) {
        self.send(&super::query_frame(sql, self.up.client_text));
        self.expect.push(Expect::Results {
            sink: Sink::Swallow,
            until_ready: true,
            injected: true,
        });
        self.expect.push(Expect::Ready { forward: false });
    }

    /// Claims the transaction for lockstep capture in front of a client's Query; `begin`
    /// opens one first (the client is in autocommit).
    pub(super) fn claim_before_query(&mut self, begin: bool) {
        if begin {
            self.inject_query(&format!("BEGIN; {CLAIM_SQL}"));
            self.wrapped = true;
        } else {
            self.inject_query(CLAIM_SQL);
        }
        self.status = b'T';
        self.claimed_now();
    }

    /// The same in the middle of an extended batch.
    pub(super) fn claim_before_execute(&mut self, begin: bool) {
        if begin {
            self.inject("BEGIN", Sink::Swallow);
            self.wrapped = true;
        }
        self.inject(CLAIM_SQL, Sink::Swallow);
        self.status = b'T';
        self.claimed_now();
    }
}

/// Closes the proxy's own portal and statement (a no-op where they do not exist).
fn close_own(out: &mut BytesMut) {
    for target in [Target::Portal, Target::Statement] {
        FrontendMessage::Close {
            target,
            name: OWN.into(),
        }
        .encode(out);
    }
}
