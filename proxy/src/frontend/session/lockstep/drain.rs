//! Reading a claimed transaction's captured changes at its commit, page by page, and
//! handing each event to the lockstep secondary transaction with its table's facts.

use super::Mediation;
use crate::frontend::session::End;
use crate::mirror::tables::{lookup_sql, Found, TableInfo};
use bytes::Bytes;
use std::sync::Arc;
use switchyard_core::capture::{Event, Op, DRAIN_PAGE, DRAIN_SQL, DRAIN_SQL_UTF8_BASE64};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a statement gets in a transaction an earlier statement failed.
const IN_FAILED_TRANSACTION: &str = "25P02";

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
    /// The drain at commit: deferred triggers fire first where the database has any, then
    /// whatever the transaction captured since its last drain is applied. Skipped when
    /// nothing can have been captured since (every write was drained as it ran).
    pub(super) async fn drain(&mut self) -> Result<Drained, End> {
        let deferred = self.ms.mirror.routines.current().deferred_writers;
        if !deferred && self.up.undrained() == 0 {
            return Ok(Drained::Done);
        }
        // Deferred constraint triggers fire now rather than at COMMIT, so what they write is
        // captured too (and one that fails, fails here, before anything reached the
        // secondary).
        if deferred {
            self.inject(
                "SET CONSTRAINTS ALL IMMEDIATE",
                super::expect::Sink::Swallow,
            );
        }
        self.queue_drain();
        self.settle().await?;
        self.apply_drained().await
    }

    /// A write statement was queued: drains behind it, in the same round trip, once enough
    /// statements are undrained. A transaction the proxy opened drains at its commit, just
    /// after; behind a COPY only its data may come.
    pub(super) fn after_write(&mut self, copy: bool) {
        let n = self.up.note_undrained();
        // `mirror.drain_every_writes`: see its documentation for what the number trades.
        if !self.wrapped && !copy && n >= self.ms.mirror.config.drain_every_writes.max(1) {
            self.queue_drain();
        }
    }

    /// Before a SAVEPOINT reaches new: the changes made before it must be there first, or a
    /// later ROLLBACK TO it would undo them on new but not on old. (Undrained changes are
    /// then always newer than every open savepoint, so RELEASE and ROLLBACK TO need no
    /// drain: what ROLLBACK TO undoes on old never reaches new.)
    pub(super) async fn drain_before_savepoint(&mut self) -> Result<(), End> {
        self.settle().await?;
        self.drained().await?;
        if self.up.undrained() > 0 && !self.failed && self.status == b'T' {
            self.queue_drain();
            self.settle().await?;
            self.drained().await?;
        }
        Ok(())
    }

    /// After a settle: applies what an eager drain returned. A drain that failed in a live
    /// transaction leaves it unable to commit (with a clear error at its commit).
    pub(super) async fn drained(&mut self) -> Result<(), End> {
        if let Drained::Failed = self.apply_drained().await? {
            let detail = self
                .swallowed
                .take()
                .map(|e| e.message().to_string())
                .unwrap_or_default();
            self.unreadable(&format!("reading the captured changes: {detail}"));
        }
        Ok(())
    }

    /// Asks for the next page of the transaction's captured changes, behind whatever was
    /// sent before it (its answer is read by the next `settle`).
    pub(super) fn queue_drain(&mut self) {
        self.swallowed = None;
        self.drain_base64 = !self.up.client_text.is_utf8();
        let sql = if self.drain_base64 {
            DRAIN_SQL_UTF8_BASE64
        } else {
            DRAIN_SQL
        };
        self.inject(sql, super::expect::Sink::Rows);
        self.draining = true;
    }

    /// Applies the page a queued drain returned (and the pages after it) to the secondary,
    /// without waiting for the secondary. Failed when the drain itself failed; a
    /// transaction the client's own statement failed has nothing to apply (the drain then
    /// found it aborted).
    pub(super) async fn apply_drained(&mut self) -> Result<Drained, End> {
        if !std::mem::take(&mut self.draining) {
            return Ok(Drained::Done);
        }
        loop {
            if let Some(e) = &self.swallowed {
                if self.error_seen || e.code() == IN_FAILED_TRANSACTION {
                    self.swallowed = None;
                    return Ok(Drained::Done);
                }
                return Ok(Drained::Failed);
            }
            let rows = std::mem::take(&mut self.rows);
            let n = rows.len();
            if n > 0 && !self.ms.txn.open {
                self.ms.start_with(self.up.savepoints());
            }
            for mut row in rows {
                if self.drain_base64 {
                    if let Err(e) = utf8_rows(&mut row) {
                        self.unreadable(&e);
                        continue;
                    }
                }
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
                self.up.set_drained();
                return Ok(Drained::Done);
            }
            self.queue_drain();
            self.draining = false;
            self.settle().await?;
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
        // Read in the session's client encoding (names of tables and columns).
        let codec = self.up.client_text;
        let values: Vec<Option<String>> = row
            .iter()
            .map(|v| v.as_ref().map(|b| codec.decode_lossy(b).into_owned()))
            .collect();
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

/// The rows column of a `DRAIN_SQL_UTF8_BASE64` row back to its UTF-8 text.
fn utf8_rows(row: &mut [Option<Bytes>]) -> Result<(), String> {
    use base64::Engine;
    let Some(Some(encoded)) = row.get(5) else {
        return Ok(());
    };
    // PostgreSQL breaks base64 into lines of 76.
    let packed: Vec<u8> = encoded.iter().copied().filter(|b| *b != b'\n').collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(packed)
        .map_err(|e| format!("captured rows not base64: {e}"))?;
    row[5] = Some(Bytes::from(decoded));
    Ok(())
}
