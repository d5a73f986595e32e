//! Reading a claimed transaction's captured changes at its commit, page by page, and
//! handing each event to the lockstep secondary transaction with its table's facts.

use super::Mediation;
use crate::frontend::session::End;
use crate::mirror::tables::{lookup_sql, Found, TableInfo};
use bytes::Bytes;
use std::sync::Arc;
use switchyard_core::capture::{Event, Op, DRAIN_PAGE, DRAIN_SQL};
use tokio::io::{AsyncRead, AsyncWrite};

/// How the drain ended.
pub(super) enum Drained {
    /// Every change reached the secondary transaction (or its records).
    Done,
    /// The primary refused to go on; the error is in `swallowed`.
    Failed,
}

impl<R, W> Mediation<'_, '_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn drain(&mut self) -> Result<Drained, End> {
        // Deferred constraint triggers fire now rather than at COMMIT, so what they write is
        // captured too (and one that fails, fails here, before anything reached the
        // secondary). Where the database has none, nothing can write at COMMIT.
        if self.ms.mirror.routines.current().deferred_writers {
            self.inject(
                "SET CONSTRAINTS ALL IMMEDIATE",
                super::expect::Sink::Swallow,
            );
        }
        loop {
            let Some(rows) = self.query_rows(DRAIN_SQL).await? else {
                return Ok(Drained::Failed);
            };
            let n = rows.len();
            for row in rows {
                let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
                let event = match Event::from_text(&values) {
                    Ok(e) => e,
                    Err(e) => {
                        self.unreadable(&e.to_string());
                        continue;
                    }
                };
                let table = match event.op {
                    Op::Statement => None,
                    _ => match self.table_of(&event).await? {
                        Some(t) => Some(t),
                        // Dropped later in the same transaction: its changes go with it.
                        None => continue,
                    },
                };
                self.ms.apply(table.as_deref(), &event).await;
            }
            self.ms
                .mirror
                .status
                .capture
                .lockstep_events
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::metrics::CAPTURE_EVENTS_TOTAL).increment(n as u64);
            if n < DRAIN_PAGE as usize {
                return Ok(Drained::Done);
            }
        }
    }

    fn unreadable(&mut self, detail: &str) {
        tracing::error!(detail, "A captured change could not be read; the transaction will not commit unless the new database takes it.");
        self.ms
            .txn
            .unrecordable
            .get_or_insert_with(|| detail.to_string());
        self.ms.abandon("a captured change could not be read");
    }

    /// The facts of an event's table at the event's version: cached, else from the proxy's
    /// own connection, else (DDL in this very transaction) from the client's transaction.
    /// None when the table no longer exists.
    async fn table_of(&mut self, event: &Event) -> Result<Option<Arc<TableInfo>>, End> {
        let mirror = self.ms.mirror.clone();
        if let Some(version) = event.version {
            if let Some(t) = mirror.tables.cached(event.relid, version) {
                return Ok(Some(t));
            }
            match mirror
                .tables
                .lookup(&mirror.control, event.relid, version)
                .await
            {
                Ok(Found::Table(t)) => return Ok(Some(t)),
                Ok(Found::Missing | Found::OtherVersion) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "Looking up a table on the proxy's connection failed; asking the client's transaction.")
                }
            }
        }
        let Some(rows) = self.query_rows(&lookup_sql(event.relid)).await? else {
            let detail = self
                .swallowed
                .take()
                .map(|e| e.message().to_string())
                .unwrap_or_default();
            self.unreadable(&format!("looking up table oid {}: {detail}", event.relid));
            return Ok(None);
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let values: Vec<Option<String>> = row.iter().map(text).collect();
        let version = event.version.or_else(|| {
            values
                .get(5)
                .cloned()
                .flatten()
                .and_then(|v| v.parse().ok())
        });
        match mirror
            .tables
            .from_values(event.relid, version.unwrap_or(-1), &values)
        {
            Ok(Found::Table(t)) => Ok(Some(t)),
            Ok(Found::Missing) => Ok(None),
            Ok(Found::OtherVersion) => {
                self.unreadable(&format!(
                    "table oid {} changed while its changes were read",
                    event.relid
                ));
                Ok(None)
            }
            Err(e) => {
                self.unreadable(&e.to_string());
                Ok(None)
            }
        }
    }
}

fn text(v: &Option<Bytes>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}
