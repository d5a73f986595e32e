//! One client transaction's lockstep counterpart on the secondary, independent of the wire:
//! the captured events are applied in order (BEGIN at the first), what must be recorded if
//! the secondary fails is kept, and the two-phase commit steps run here.
//!
//! The secondary transaction starts at the client's commit, when the primary's capture is
//! drained: savepoints and rollbacks inside the client's transaction never reach it (a
//! rolled-back change leaves no captured row).

use super::tables::TableInfo;
use super::{Mirror, MirrorError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchyard_core::capture::apply::{truncate_sql, ApplySql};
use switchyard_core::capture::{Event, Op};
use switchyard_core::retry::{Origin, RetryRecord};

/// Statement records (DDL, rows of tables without a key) kept per transaction in case the
/// secondary fails; beyond this the transaction cannot commit unless the secondary takes it.
const MAX_STATEMENT_BYTES: usize = 64 << 20;

pub struct MirrorSession {
    pub mirror: Arc<Mirror>,
    pub secondary: super::secondary::Secondary,
    pub txn: Txn,
}

#[derive(Default)]
pub struct Txn {
    /// BEGIN was sent to the secondary.
    pub open: bool,
    /// Why the secondary transaction was abandoned; from then on changes are only recorded.
    pub broken: Option<String>,
    /// The primary's transaction id, from the drained rows.
    pub xid: Option<String>,
    /// Events applied or recorded.
    pub events: u64,
    /// Savepoints open in the client's transaction, oldest first: the secondary's
    /// transaction follows them (replayed at its BEGIN when it opens later).
    savepoints: Vec<(String, usize)>,
    /// A statement (DDL) was among them.
    pub had_statements: bool,
    /// Keys touched, as compact JSON text with a shared table name: up to
    /// `max_tracked_keys` of them.
    keys: Vec<(Arc<str>, String)>,
    /// Tables with more keys than are tracked: re-synced whole if the secondary fails.
    overflow: BTreeMap<String, String>,
    /// Changes that cannot be re-read by key, in order: statements to run once.
    statements: Vec<(String, &'static str)>,
    statement_bytes: usize,
    /// Rows sent to the secondary and not yet confirmed, by table (for the counters).
    unconfirmed: BTreeMap<Arc<str>, u64>,
    /// Tables truncated by the same command, waiting for the next event.
    truncated: Vec<String>,
    /// Keys whose images the secondary cannot read (a json value holding `\u0000`, which
    /// `json_populate_recordset` refuses): re-synced by key through the retry log.
    pub resync: Vec<(Arc<str>, String)>,
    pub prepared: Option<String>,
    /// Lockstep mode: the secondary transaction's id, asked for right after its BEGIN.
    pub secondary_xid: Option<tokio::sync::oneshot::Receiver<Option<String>>>,
    /// Lockstep mode: the intent is in the primary's transaction (its xid).
    pub intent: Option<String>,
    /// Something happened that the retry log cannot describe: the transaction must not
    /// commit unless the secondary took everything.
    pub unrecordable: Option<String>,
}

impl Txn {
    /// The retry log must get records before the primary commits.
    pub fn needs_records(&self) -> bool {
        (self.broken.is_some() && self.events > 0) || !self.resync.is_empty()
    }
}

/// How many images a JSON array holds, and the columns of its first one.
fn shape(rows: &str) -> Result<(u64, BTreeSet<String>, Vec<serde_json::Value>), serde_json::Error> {
    let images: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(rows)?;
    let columns = images
        .first()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let n = images.len() as u64;
    Ok((
        n,
        columns,
        images.into_iter().map(serde_json::Value::Object).collect(),
    ))
}

/// The key object (`{"col": value}`) of an image.
fn key_of(image: &serde_json::Value, key: &[String]) -> serde_json::Value {
    serde_json::Value::Object(
        key.iter()
            .map(|c| {
                (
                    c.clone(),
                    image.get(c).cloned().unwrap_or(serde_json::Value::Null),
                )
            })
            .collect(),
    )
}

impl MirrorSession {
    pub fn new(mirror: Arc<Mirror>) -> Self {
        let secondary = mirror.new_secondary();
        MirrorSession {
            mirror,
            secondary,
            txn: Txn::default(),
        }
    }

    pub(super) fn fail(&mut self, e: &MirrorError) {
        if self.txn.broken.is_none() {
            tracing::warn!(error = %e, "The new database did not take a change; its keys go to the retry log.");
            self.mirror.status.secondary_error(e.sqlstate());
            self.txn.broken = Some(e.to_string());
        }
    }

    /// Gives up the secondary transaction without an error (its changes will be recorded).
    pub fn abandon(&mut self, reason: &str) {
        if self.txn.broken.is_none() {
            self.txn.broken = Some(reason.to_string());
        }
    }

    async fn ensure_open(&mut self) -> bool {
        if self.txn.broken.is_some() {
            return false;
        }
        if !self.txn.open {
            let mut sql = String::from("BEGIN");
            for (sp, _) in &self.txn.savepoints {
                sql.push_str("; SAVEPOINT ");
                sql.push_str(&switchyard_core::ident::quote_ident(sp));
            }
            match self.secondary.queue_batch("BEGIN", sql).await {
                Ok(()) => self.txn.open = true,
                Err(e) => {
                    self.fail(&e);
                    return false;
                }
            }
            if self.mirror.intents_mode() {
                // Recovery asks the secondary about this id when the intent is left behind.
                let asked = self
                    .secondary
                    .queue_value("xid", "SELECT pg_catalog.pg_current_xact_id()::text".into())
                    .await;
                match asked {
                    Ok(rx) => self.txn.secondary_xid = Some(rx),
                    Err(e) => {
                        self.fail(&e);
                        return false;
                    }
                }
            }
        }
        true
    }

    async fn send(&mut self, sql: Arc<str>, rows: String) {
        if self.ensure_open().await {
            if let Err(e) = self.secondary.queue_apply(sql, rows).await {
                self.fail(&e);
            }
        }
    }

    async fn send_batch(&mut self, what: &'static str, sql: String) {
        if self.ensure_open().await {
            if let Err(e) = self.secondary.queue_batch(what, sql).await {
                self.fail(&e);
            }
        }
    }

    fn keep_statement(&mut self, sql: String, why: &'static str) {
        self.txn.statement_bytes += sql.len();
        if self.txn.statement_bytes > MAX_STATEMENT_BYTES {
            self.txn.unrecordable.get_or_insert_with(|| {
                format!(
                    "more than {} MB of changes that cannot be re-read by key",
                    MAX_STATEMENT_BYTES >> 20
                )
            });
            return;
        }
        self.txn.statements.push((sql, why));
    }

    fn track_keys(&mut self, table: &TableInfo, keys: Vec<serde_json::Value>) {
        let cap = self.mirror.config.max_tracked_keys;
        if self.txn.keys.len() + keys.len() > cap {
            self.txn
                .overflow
                .entry(table.name.clone())
                .or_insert_with(|| format!("more than {cap} keys in one transaction"));
        } else {
            self.txn.keys.extend(
                keys.into_iter()
                    .map(|k| (table.shared_name.clone(), k.to_string())),
            );
        }
    }

    pub(super) async fn flush_truncates(&mut self) {
        if self.txn.truncated.is_empty() {
            return;
        }
        let sql = truncate_sql(&std::mem::take(&mut self.txn.truncated));
        self.keep_statement(sql.clone(), "TRUNCATE");
        self.send_batch("TRUNCATE", sql).await;
    }

    /// Applies one drained event of `table` (None for a statement event) in order.
    pub async fn apply(&mut self, table: Option<&TableInfo>, event: &Event) {
        if self.txn.xid.is_none() {
            self.txn.xid = Some(event.xid.clone());
        }
        self.txn.events += 1;
        if event.op != Op::Truncate {
            self.flush_truncates().await;
        }
        let Some(table) = table else {
            self.txn.had_statements = true;
            if let Some((sql, path)) = event.statement() {
                let sql = match path {
                    Some(p) => format!(
                        "SELECT pg_catalog.set_config('search_path', {}, true); {sql}",
                        switchyard_core::ident::quote_literal(&p)
                    ),
                    None => sql,
                };
                self.keep_statement(sql.clone(), "statement");
                // Waited for: later images may need the new shape, and DDL is rare.
                if self.ensure_open().await {
                    if let Err(e) = self.secondary.execute("DDL", &sql).await {
                        self.fail(&e);
                    }
                }
            }
            return;
        };
        if event.op == Op::Truncate {
            if let Some(own) = &table.truncates {
                if !self.txn.truncated.contains(own) {
                    self.txn.truncated.push(own.clone());
                }
            }
            return;
        }
        let rows = event.rows.clone().unwrap_or_else(|| "[]".into());
        let (n, columns, images) = match shape(&rows) {
            Ok(s) => s,
            Err(e) => {
                self.txn.unrecordable.get_or_insert_with(|| {
                    format!("a captured row of {} is unreadable: {e}", table.name)
                });
                self.abandon("a captured row is unreadable");
                return;
            }
        };
        let sql = if event.op == Op::DeleteKeys {
            table.full_sql()
        } else {
            table.sql(&columns)
        };
        let statement: &str = match event.op {
            Op::DeleteKeys => &sql.delete_keys,
            Op::DeleteRows => &sql.delete_rows,
            _ => &sql.write,
        };
        if table.has_key() {
            let keys: Vec<serde_json::Value> = if event.op == Op::DeleteKeys {
                images
            } else {
                images
                    .iter()
                    .map(|image| key_of(image, &table.key))
                    .collect()
            };
            if rows.contains("\\u0000") {
                // Old may store it in json; the apply on new cannot read it back. These rows
                // go by key, re-read from old by replay; the rest stays in lockstep.
                self.txn.resync.extend(
                    keys.into_iter()
                        .map(|k| (table.shared_name.clone(), k.to_string())),
                );
                self.mirror.status.rows(&table.name, 0, n);
                return;
            }
            self.track_keys(table, keys);
        } else {
            self.keep_statement(
                ApplySql::inline(statement, &rows),
                "rows of a table without a primary key",
            );
        }
        *self
            .txn
            .unconfirmed
            .entry(table.shared_name.clone())
            .or_default() += n;
        let statement: Arc<str> = Arc::from(statement);
        self.send(statement, rows).await;
    }

    /// The savepoints the client's transaction has open, for a secondary transaction not
    /// open yet: its BEGIN opens them too.
    pub fn start_with(&mut self, savepoints: Vec<String>) {
        if !self.txn.open {
            self.txn.savepoints = savepoints.into_iter().map(|s| (s, 0)).collect();
        }
    }

    /// A SAVEPOINT, RELEASE or ROLLBACK TO the primary took: the secondary's transaction
    /// does the same at the same place among the changes.
    pub async fn savepoint_op(&mut self, op: &super::plan::TxnOp) {
        use super::plan::TxnOp;
        let q = switchyard_core::ident::quote_ident;
        // Until the secondary's transaction opens, the session's list is what it starts
        // with (`start_with`). Once open, each savepoint also remembers how many statement
        // records came before it: a rollback to it drops the later ones (their rows are gone
        // on the primary too).
        if !self.txn.open {
            return;
        }
        let sql = match op {
            TxnOp::Savepoint(n) => {
                self.txn
                    .savepoints
                    .push((n.clone(), self.txn.statements.len()));
                format!("SAVEPOINT {}", q(n))
            }
            TxnOp::Release(n) => {
                if let Some(i) = self.txn.savepoints.iter().rposition(|(s, _)| s == n) {
                    self.txn.savepoints.truncate(i);
                }
                format!("RELEASE SAVEPOINT {}", q(n))
            }
            TxnOp::RollbackTo(n) => {
                if let Some(i) = self.txn.savepoints.iter().rposition(|(s, _)| s == n) {
                    let kept = self.txn.savepoints[i].1;
                    self.txn.statements.truncate(kept);
                    self.txn.savepoints.truncate(i + 1);
                }
                format!("ROLLBACK TO SAVEPOINT {}", q(n))
            }
            _ => return,
        };
        if self.txn.open && self.txn.broken.is_none() {
            if let Err(e) = self.secondary.queue_batch("SAVEPOINT", sql).await {
                self.fail(&e);
            }
        }
    }

    /// Waits for the queued secondary work; false (and the transaction marked broken) if any
    /// of it failed.
    pub(super) async fn sync(&mut self) -> bool {
        self.flush_truncates().await;
        if self.txn.broken.is_some() {
            return false;
        }
        let result = self.secondary.sync().await;
        self.note_synced(result)
    }

    /// Books what a sync of the secondary said: true if everything was taken.
    pub(super) fn note_synced(&mut self, result: Result<(), MirrorError>) -> bool {
        let ok = result.is_ok();
        if let Err(e) = result {
            self.fail(&e);
        }
        for (table, n) in std::mem::take(&mut self.txn.unconfirmed) {
            if ok {
                self.mirror.status.rows(&table, n, 0);
            } else {
                self.mirror.status.rows(&table, 0, n);
            }
        }
        ok
    }

    /// The primary's transaction id (from the drained rows); without it the transaction
    /// cannot be finished by recovery, so it is failed (its changes go to the retry log).
    pub(super) fn primary_xid(&mut self) -> Option<String> {
        let xid = self.txn.xid.clone();
        if xid.is_none() {
            self.fail(&MirrorError::Catalog(format!(
                "the {} database's transaction id is unknown",
                self.mirror.direction.primary()
            )));
        }
        xid
    }

    /// PREPARE TRANSACTION on the secondary; false when the transaction has to be recorded.
    pub async fn prepare(&mut self) -> bool {
        self.flush_truncates().await;
        if !self.txn.open || self.txn.broken.is_some() {
            return false;
        }
        let Some(xid) = self.primary_xid() else {
            return false;
        };
        // Sent behind the applies without waiting for them: one round trip for all. If an
        // apply failed, the server ends the aborted transaction at PREPARE without preparing
        // it, and the first error is what `sync` reports.
        let gid = self.mirror.direction.gid(&xid);
        if let Err(e) = self
            .secondary
            .queue_batch(
                "PREPARE TRANSACTION",
                format!("PREPARE TRANSACTION '{gid}'"),
            )
            .await
        {
            self.fail(&e);
            return false;
        }
        if !self.sync().await {
            return false;
        }
        self.txn.open = false;
        self.txn.prepared = Some(gid);
        true
    }

    /// The re-sync orders for everything this transaction changed, when the secondary did
    /// not take it.
    pub fn records(&self) -> Vec<RetryRecord> {
        self.records_of(self.txn.broken.is_some())
    }

    /// The re-sync orders for this transaction's changes: all of them (`everything`), or
    /// only those the retry log needs although the secondary took the rest.
    pub(super) fn records_of(&self, everything: bool) -> Vec<RetryRecord> {
        let origin = Origin {
            instance: self.mirror.instance.clone(),
            xid: self.txn.xid.clone(),
            ordinal: 0,
            direction: self.mirror.direction,
        };
        let reason = self.txn.broken.clone().unwrap_or_else(|| {
            if everything {
                "intent".into()
            } else {
                "queued".into()
            }
        });
        let mut out = Vec::with_capacity(
            self.txn.keys.len() + self.txn.overflow.len() + self.txn.statements.len(),
        );
        let mut seen = std::collections::HashSet::new();
        let broken = everything;
        let keys = self.txn.keys.iter().filter(|_| broken);
        for (table, key) in keys.chain(&self.txn.resync) {
            if self.txn.overflow.contains_key(&**table) || !seen.insert((&**table, key.as_str())) {
                continue;
            }
            out.push(RetryRecord::row(
                &origin,
                table,
                key,
                serde_json::from_str(key).ok(),
                reason.clone(),
            ));
        }
        for (table, why) in self.txn.overflow.iter().filter(|_| broken) {
            out.push(RetryRecord::table(&origin, table, why.clone()));
        }
        for (i, (sql, why)) in self.txn.statements.iter().enumerate().filter(|_| broken) {
            out.push(RetryRecord::statement(
                &origin,
                i as u32 + 1,
                sql,
                format!("{reason} ({why})"),
            ));
        }
        out
    }

    /// Ends the transaction after the primary committed (`committed`) or rolled back.
    /// Waits until new has run everything queued, the COMMIT PREPARED of `finish`
    /// included. If it cannot, the transaction is in doubt there: counted as a retry
    /// record, so reads stay on old until recovery has finished it.
    pub async fn wait_finished(&mut self) {
        if let Err(e) = self.secondary.sync().await {
            tracing::warn!(error = %e, "New did not confirm a commit; reads stay on old until it is resolved.");
            self.mirror
                .status
                .retry_backlog
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub async fn finish(&mut self, committed: bool) {
        if let Some(xid) = self.txn.intent.take() {
            self.finish_intent(xid, committed).await;
        } else if let Some(gid) = self.txn.prepared.take() {
            self.secondary.finish_prepared(&gid, committed).await;
            if committed {
                self.mirror
                    .status
                    .commits_two_phase
                    .fetch_add(1, Ordering::Relaxed);
            }
        } else if self.txn.open {
            // Rolled back on the primary, or abandoned after a secondary error.
            self.secondary.rollback().await;
        }
        // Rows never confirmed by the secondary: queued if the primary committed them.
        if committed && self.txn.broken.is_some() {
            // Until the recovery loop counts the records: reads stay on old meanwhile.
            self.mirror
                .status
                .retry_backlog
                .fetch_add(1, Ordering::Relaxed);
        }
        for (table, n) in std::mem::take(&mut self.txn.unconfirmed) {
            if committed && self.txn.broken.is_some() {
                self.mirror.status.rows(&table, 0, n);
            }
        }
        if self.txn.events > 0 {
            if committed && self.txn.broken.is_some() {
                self.mirror
                    .status
                    .commits_queued
                    .fetch_add(1, Ordering::Relaxed);
            }
            let outcome = match (committed, self.txn.broken.is_some()) {
                (true, false) if self.mirror.intents_mode() => "lockstep",
                (true, false) => "two_phase",
                (true, true) => "queued",
                (false, _) => "rolled_back",
            };
            metrics::counter!(crate::metrics::MIRROR_COMMITS_TOTAL, "outcome" => outcome)
                .increment(1);
        }
        self.txn = Txn::default();
    }
}
