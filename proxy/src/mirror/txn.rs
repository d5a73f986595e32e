//! One session's lockstep transaction on the secondary, independent of the wire: what was
//! applied, what must be queued, savepoints, and the two-phase commit steps.

use super::catalog::TableInfo;
use super::rewrite::{quote_ident, DmlKind};
use super::secondary::Secondary;
use super::{Mirror, MirrorError};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchyard_core::retry::{gid_for, Origin, RecordKind, RetryRecord};

pub struct MirrorSession {
    pub mirror: Arc<Mirror>,
    pub secondary: Secondary,
    pub txn: Txn,
}

#[derive(Default)]
pub struct Txn {
    /// BEGIN was sent to the secondary.
    pub open: bool,
    /// Why the secondary transaction was abandoned; from then on changes are only queued.
    pub broken: Option<String>,
    /// The primary's transaction id, learned from captured rows or asked for before PREPARE.
    pub xid: Option<String>,
    pub ordinal: u32,
    pub savepoints: Vec<String>,
    /// Keys touched, as compact JSON text with a shared table name: up to
    /// `max_tracked_keys` of them live for the whole transaction.
    keys: Vec<(Arc<str>, Box<str>)>,
    /// Tables whose changes could not be pinned to keys: re-synced whole.
    tables: BTreeMap<String, String>,
    /// Tables with more keys than are tracked: re-synced whole if the secondary fails.
    overflow: BTreeMap<String, String>,
    /// Rows queued to the secondary and not yet confirmed, by table (for the counters).
    unconfirmed: Vec<(String, u64)>,
    statements: Vec<(String, String)>,
    pub prepared: Option<String>,
    /// Something went wrong that the retry log cannot describe (a written table could not
    /// be looked up): the transaction must not commit.
    pub fatal: Option<String>,
}

impl Txn {
    /// Anything for the secondary happened in this transaction.
    pub fn touched(&self) -> bool {
        self.open
            || self.broken.is_some()
            || !self.keys.is_empty()
            || !self.tables.is_empty()
            || !self.statements.is_empty()
    }

    /// The retry log must get records before the primary commits.
    pub fn needs_records(&self) -> bool {
        !self.tables.is_empty()
            || (self.broken.is_some()
                && (!self.keys.is_empty()
                    || !self.statements.is_empty()
                    || !self.overflow.is_empty()))
    }
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

    fn fail(&mut self, e: &MirrorError) {
        if self.txn.broken.is_none() {
            tracing::warn!(error = %e, "The new database did not take a change; its keys go to the retry log.");
            self.mirror.status.secondary_error(e.sqlstate());
            self.txn.broken = Some(e.to_string());
        }
    }

    async fn ensure_open(&mut self) -> bool {
        if self.txn.broken.is_some() {
            return false;
        }
        if self.txn.open {
            return true;
        }
        let mut sql = String::from("BEGIN");
        for sp in &self.txn.savepoints {
            sql.push_str("; SAVEPOINT ");
            sql.push_str(&quote_ident(sp));
        }
        match self.secondary.queue_execute("BEGIN", sql).await {
            Ok(()) => {
                self.txn.open = true;
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// Waits for the queued secondary work; false (and the transaction marked broken) if
    /// any of it failed.
    async fn sync(&mut self) -> bool {
        if self.txn.broken.is_some() {
            return false;
        }
        let result = self.secondary.sync().await;
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

    /// Gives up the secondary transaction without an error (its keys will be recorded).
    pub fn abandon(&mut self, reason: &str) {
        if self.txn.broken.is_none() {
            self.txn.broken = Some(reason.to_string());
        }
    }

    /// Applies captured row images (a JSON array) of one table, or queues their keys.
    pub async fn apply(
        &mut self,
        table: &TableInfo,
        kind: DmlKind,
        images: &str,
        keys: Vec<String>,
        n: u64,
    ) {
        let cap = self.mirror.config.max_tracked_keys;
        if self.txn.keys.len() + keys.len() > cap {
            self.txn
                .overflow
                .entry(table.name.clone())
                .or_insert_with(|| format!("more than {cap} keys in one transaction"));
        } else {
            self.txn.keys.extend(
                keys.into_iter()
                    .map(|k| (table.shared_name.clone(), k.into_boxed_str())),
            );
        }
        if !table.has_key() {
            // Kept as a statement to replay should the secondary transaction fail later.
            self.keep_keyless(table, images);
        }
        if !self.ensure_open().await {
            self.mirror.status.rows(&table.name, 0, n);
            return;
        }
        let sql = match kind {
            _ if !table.has_key() => &table.insert_sql,
            DmlKind::Delete => &table.delete_sql,
            DmlKind::Insert | DmlKind::Update => &table.upsert_sql,
        };
        match self.secondary.queue_apply(sql, images.to_string()).await {
            Ok(()) => self.txn.unconfirmed.push((table.name.clone(), n)),
            Err(e) => {
                self.fail(&e);
                self.mirror.status.rows(&table.name, 0, n);
            }
        }
    }

    /// Inserted rows of a table without a primary key cannot be re-read by key; the
    /// record carries the insert itself, row images inlined, replayed once.
    fn keep_keyless(&mut self, table: &TableInfo, images: &str) {
        let mut tag = String::from("sy");
        while images.contains(&format!("${tag}$")) {
            tag.push('x');
        }
        let sql = table
            .insert_sql
            .replace("$1::text::json", &format!("${tag}${images}${tag}$::json"));
        self.txn.ordinal += 1;
        self.txn
            .statements
            .push((sql, "rows of a table without a primary key".into()));
    }

    /// A change that must be re-synced table-wide (a primary-key update, a table without a
    /// key reached through the extended protocol).
    pub fn queue_table(&mut self, table: &str, reason: &str) {
        // Row images applied so far stay; the table record repairs what they miss.
        self.txn
            .tables
            .entry(table.to_string())
            .or_insert_with(|| reason.to_string());
    }

    /// Statement mode: runs `sql` on the secondary in the lockstep transaction, or queues it
    /// when the secondary transaction is gone or earlier statements are still queued.
    pub async fn statement(&mut self, sql: &str, queued_before: bool) {
        self.txn.ordinal += 1;
        if queued_before {
            self.txn.statements.push((
                sql.to_string(),
                "earlier statements are still queued".into(),
            ));
            // Keep order: everything after a queued statement is queued too.
            if self.txn.broken.is_none() {
                self.txn.broken = Some("statement order: earlier statements are queued".into());
            }
            return;
        }
        // Waited for: DDL is rare, and later row images may depend on it.
        if self.ensure_open().await {
            if let Err(e) = self.secondary.execute(sql).await {
                self.fail(&e);
            }
        }
        // Kept even when applied: if the secondary transaction fails later, it is replayed.
        self.txn
            .statements
            .push((sql.to_string(), self.txn.broken.clone().unwrap_or_default()));
    }

    async fn queue_savepoint_op(&mut self, what: &'static str, sql: String) {
        if self.txn.open && self.txn.broken.is_none() {
            if let Err(e) = self.secondary.queue_execute(what, sql).await {
                self.fail(&e);
            }
        }
    }

    /// COPY FROM STDIN the primary took: the same data to the secondary in the lockstep
    /// transaction. `data` is None when it was too large to keep; then, as when the
    /// secondary fails, the table is re-synced whole.
    pub async fn copy(
        &mut self,
        sql: &str,
        data: Option<Vec<bytes::Bytes>>,
        table: &str,
        search_path: &str,
    ) {
        self.txn.ordinal += 1;
        let Some(data) = data else {
            self.queue_table(table, "COPY FROM larger than the proxy keeps");
            return;
        };
        self.txn
            .overflow
            .entry(table.to_string())
            .or_insert_with(|| "COPY FROM not applied".into());
        if !self.ensure_open().await {
            return;
        }
        if !search_path.is_empty() {
            if let Err(e) = self
                .secondary
                .queue_execute("SET search_path", search_path.to_string())
                .await
            {
                self.fail(&e);
                return;
            }
        }
        if let Err(e) = self.secondary.queue_copy(sql.to_string(), data).await {
            self.fail(&e);
        }
    }

    pub async fn savepoint(&mut self, name: &str) {
        self.txn.savepoints.push(name.to_string());
        self.queue_savepoint_op("SAVEPOINT", format!("SAVEPOINT {}", quote_ident(name)))
            .await;
    }

    pub async fn release(&mut self, name: &str) {
        if let Some(i) = self.txn.savepoints.iter().rposition(|s| s == name) {
            self.txn.savepoints.truncate(i);
        }
        self.queue_savepoint_op(
            "RELEASE",
            format!("RELEASE SAVEPOINT {}", quote_ident(name)),
        )
        .await;
    }

    pub async fn rollback_to(&mut self, name: &str) {
        if let Some(i) = self.txn.savepoints.iter().rposition(|s| s == name) {
            self.txn.savepoints.truncate(i + 1);
        }
        self.queue_savepoint_op(
            "ROLLBACK TO",
            format!("ROLLBACK TO SAVEPOINT {}", quote_ident(name)),
        )
        .await;
    }

    /// PREPARE TRANSACTION on the secondary; false when the transaction has to be queued.
    pub async fn prepare(&mut self) -> bool {
        if !self.txn.open || !self.sync().await {
            return false;
        }
        let Some(xid) = self.txn.xid.clone() else {
            self.fail(&MirrorError::Catalog(
                "the old database's transaction id is unknown".into(),
            ));
            return false;
        };
        let gid = gid_for(&xid);
        match self
            .secondary
            .execute(&format!("PREPARE TRANSACTION '{gid}'"))
            .await
        {
            Ok(()) => {
                self.txn.open = false;
                self.txn.prepared = Some(gid);
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// The re-sync orders for everything this transaction changed, when the secondary did
    /// not take it.
    pub fn records(&self) -> Vec<RetryRecord> {
        let origin = Origin {
            instance: self.mirror.instance.clone(),
            xid: self.txn.xid.clone(),
            ordinal: self.txn.ordinal,
        };
        let reason = self.txn.broken.clone().unwrap_or_else(|| "queued".into());
        let mut out = Vec::with_capacity(
            self.txn.keys.len() + self.txn.tables.len() + self.txn.statements.len(),
        );
        let mut seen = std::collections::HashSet::new();
        let broken = self.txn.broken.is_some();
        for (table, key) in self.txn.keys.iter().filter(|_| broken) {
            if self.txn.tables.contains_key(&**table) || self.txn.overflow.contains_key(&**table) {
                continue;
            }
            if !seen.insert((&**table, &**key)) {
                continue;
            }
            out.push(RetryRecord {
                idempotency_key: RetryRecord::make_key(&origin, RecordKind::Row, table, key),
                kind: RecordKind::Row,
                table_name: Some(table.to_string()),
                key: serde_json::from_str(key).ok(),
                statement: None,
                origin: origin.clone(),
                reason: reason.clone(),
            });
        }
        let overflow = self.txn.overflow.iter().filter(|_| broken);
        for (table, why) in self.txn.tables.iter().chain(overflow) {
            out.push(RetryRecord {
                idempotency_key: RetryRecord::make_key(&origin, RecordKind::Table, table, ""),
                kind: RecordKind::Table,
                table_name: Some(table.clone()),
                key: None,
                statement: None,
                origin: origin.clone(),
                reason: why.clone(),
            });
        }
        for (i, (sql, why)) in self.txn.statements.iter().enumerate().filter(|_| broken) {
            let o = Origin {
                ordinal: i as u32,
                ..origin.clone()
            };
            out.push(RetryRecord {
                idempotency_key: RetryRecord::make_key(&o, RecordKind::Statement, "", sql),
                kind: RecordKind::Statement,
                table_name: None,
                key: None,
                statement: Some(sql.clone()),
                origin: o,
                reason: if why.is_empty() {
                    reason.clone()
                } else {
                    why.clone()
                },
            });
        }
        out
    }

    /// Table records must go to the log even when the secondary took everything else.
    pub fn has_table_records(&self) -> bool {
        !self.txn.tables.is_empty()
    }

    /// Ends the transaction after the primary committed (`committed`) or rolled back.
    pub async fn finish(&mut self, committed: bool) {
        if let Some(gid) = self.txn.prepared.take() {
            self.secondary.finish_prepared(&gid, committed);
            if committed {
                self.mirror
                    .status
                    .commits_two_phase
                    .fetch_add(1, Ordering::Relaxed);
            }
        } else if self.txn.open {
            // Rolled back on the primary, or abandoned after a secondary error.
            self.txn.unconfirmed.clear();
            let _ = self.secondary.sync().await;
            if self.secondary.execute("ROLLBACK").await.is_err() {
                self.secondary.abandon();
            }
        }
        if committed && self.txn.broken.is_some() {
            self.mirror
                .status
                .commits_queued
                .fetch_add(1, Ordering::Relaxed);
        }
        let outcome = match (committed, self.txn.broken.is_some()) {
            (true, false) => "two_phase",
            (true, true) => "queued",
            (false, _) => "rolled_back",
        };
        metrics::counter!(crate::metrics::MIRROR_COMMITS_TOTAL, "outcome" => outcome).increment(1);
        self.txn = Txn::default();
    }
}
