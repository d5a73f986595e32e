//! Counters behind `/api/status` for dual writes (Prometheus gets the same through the
//! `metrics` facade).

use dashmap::DashMap;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct MirrorStatus {
    pub rows_mirrored: AtomicU64,
    pub rows_queued: AtomicU64,
    pub statements_captured: AtomicU64,
    pub commits_two_phase: AtomicU64,
    pub commits_queued: AtomicU64,
    /// Prepared transactions on the secondary waiting for their primary's outcome.
    pub in_doubt: AtomicU64,
    /// Lockstep mode: intents on the primary not yet deleted (sampled every few seconds).
    pub intents: AtomicU64,
    /// Records waiting in the embedded retry log, and the age of the oldest, in seconds
    /// (sampled every few seconds).
    pub retry_backlog: AtomicU64,
    pub retry_oldest_secs: AtomicU64,
    pub secondary_errors: DashMap<String, u64>,
    /// Retry records by where they went: the embedded table, Kafka, or the embedded table
    /// because the broker did not confirm in time; and commits refused for want of a record.
    pub records_embedded: AtomicU64,
    pub records_kafka: AtomicU64,
    pub records_fallback: AtomicU64,
    pub commits_refused: AtomicU64,
    /// Statements mirrored as text or not at all, by fingerprint: what to look at.
    pub statement_mode: DashMap<String, StatementModeEntry>,
    pub by_table: DashMap<String, TableCounts>,
    pub capture: CaptureCounters,
}

/// The primary's change capture: what was drained in lockstep, and the change log of
/// writes no proxy mirrored in lockstep.
#[derive(Default)]
pub struct CaptureCounters {
    /// Capture is installed on the primary (checked at start, retried until it is).
    pub installed: AtomicBool,
    /// Captured events applied in their client's lockstep transaction.
    pub lockstep_events: AtomicU64,
    /// Change-log rows waiting, and the age of the oldest, in seconds (sampled).
    pub log_backlog: AtomicU64,
    pub log_oldest_secs: AtomicU64,
    /// Change-log rows this instance applied to the new database.
    pub log_applied: AtomicU64,
    /// Of those, written by sessions outside every proxy.
    pub writes_outside_proxy: AtomicU64,
    /// Of those, written through a proxy but outside lockstep (a procedure that commits by
    /// itself, a write the proxy did not recognise).
    pub writes_outside_lockstep: AtomicU64,
    /// Of those, rows a claimed transaction committed without draining them (a write the
    /// proxy did not expect there, such as a function it did not know writes).
    pub lockstep_leftovers: AtomicU64,
    /// Why the change log could not be drained last time, if it could not.
    pub log_error: std::sync::Mutex<Option<String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct CaptureSnapshot {
    pub installed: bool,
    pub lockstep_events: u64,
    pub log_backlog: u64,
    pub log_oldest_secs: u64,
    pub log_applied: u64,
    pub writes_outside_proxy: u64,
    pub writes_outside_lockstep: u64,
    pub lockstep_leftovers: u64,
    pub log_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatementModeEntry {
    pub reason: String,
    pub mirrored: bool,
    pub count: u64,
    pub example: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableCounts {
    pub mirrored: u64,
    pub queued: u64,
}

/// Which path retry records take.
#[derive(Debug, Default, Serialize)]
pub struct RetryLogSnapshot {
    pub backend: &'static str,
    pub records_embedded: u64,
    pub records_kafka: u64,
    /// Records that went to the embedded table because the broker did not confirm them.
    pub records_fallback: u64,
    /// Client transactions rolled back because no backend could take their records.
    pub commits_refused: u64,
    pub kafka_confirmed: u64,
    pub kafka_failed_batches: u64,
    pub kafka_on_failure: Option<&'static str>,
    pub kafka_last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MirrorSnapshot {
    pub mode: String,
    /// Which way these dual writes run (`old-to-new`, or `new-to-old` in writes-new), and
    /// the database that follows.
    pub direction: &'static str,
    pub secondary: &'static str,
    pub rows_mirrored: u64,
    pub rows_queued: u64,
    pub statements_captured: u64,
    pub commits_two_phase: u64,
    pub commits_queued: u64,
    pub in_doubt: u64,
    /// Lockstep mode: intents on the primary (settled ones are deleted in batches).
    pub intents: u64,
    pub retry_backlog: u64,
    pub retry_oldest_secs: u64,
    pub secondary_errors: std::collections::BTreeMap<String, u64>,
    pub retry_log: RetryLogSnapshot,
    pub statement_mode: std::collections::BTreeMap<String, StatementModeEntry>,
    pub tables: std::collections::BTreeMap<String, TableCounts>,
    pub capture: CaptureSnapshot,
}

impl MirrorStatus {
    pub fn secondary_error(&self, sqlstate: &str) {
        *self
            .secondary_errors
            .entry(sqlstate.to_string())
            .or_default() += 1;
        metrics::counter!(crate::metrics::MIRROR_SECONDARY_ERRORS_TOTAL, "sqlstate" => sqlstate.to_string())
            .increment(1);
    }

    pub fn statement_mode(&self, fingerprint: u64, reason: &str, mirrored: bool, sql: &str) {
        let mut e = self
            .statement_mode
            .entry(format!("{fingerprint:016x}"))
            .or_default();
        e.count += 1;
        if e.example.is_empty() {
            e.reason = reason.to_string();
            e.mirrored = mirrored;
            e.example = sql.chars().take(200).collect();
        }
        metrics::counter!(crate::metrics::MIRROR_STATEMENT_MODE_TOTAL,
            "reason" => reason.to_string(), "mirrored" => if mirrored { "true" } else { "false" })
        .increment(1);
    }

    pub fn rows(&self, table: &str, mirrored: u64, queued: u64) {
        self.rows_mirrored.fetch_add(mirrored, Ordering::Relaxed);
        self.rows_queued.fetch_add(queued, Ordering::Relaxed);
        let mut t = self.by_table.entry(table.to_string()).or_default();
        t.mirrored += mirrored;
        t.queued += queued;
        if mirrored > 0 {
            metrics::counter!(crate::metrics::MIRROR_ROWS_TOTAL, "table" => table.to_string(), "outcome" => "mirrored")
                .increment(mirrored);
        }
        if queued > 0 {
            metrics::counter!(crate::metrics::MIRROR_ROWS_TOTAL, "table" => table.to_string(), "outcome" => "queued")
                .increment(queued);
        }
    }

    pub fn snapshot(&self, mode: &str) -> MirrorSnapshot {
        MirrorSnapshot {
            mode: mode.to_string(),
            direction: "old-to-new",
            secondary: "new",
            rows_mirrored: self.rows_mirrored.load(Ordering::Relaxed),
            rows_queued: self.rows_queued.load(Ordering::Relaxed),
            statements_captured: self.statements_captured.load(Ordering::Relaxed),
            commits_two_phase: self.commits_two_phase.load(Ordering::Relaxed),
            commits_queued: self.commits_queued.load(Ordering::Relaxed),
            in_doubt: self.in_doubt.load(Ordering::Relaxed),
            intents: self.intents.load(Ordering::Relaxed),
            retry_backlog: self.retry_backlog.load(Ordering::Relaxed),
            retry_oldest_secs: self.retry_oldest_secs.load(Ordering::Relaxed),
            retry_log: RetryLogSnapshot {
                backend: "embedded",
                records_embedded: self.records_embedded.load(Ordering::Relaxed),
                records_kafka: self.records_kafka.load(Ordering::Relaxed),
                records_fallback: self.records_fallback.load(Ordering::Relaxed),
                commits_refused: self.commits_refused.load(Ordering::Relaxed),
                ..RetryLogSnapshot::default()
            },
            secondary_errors: self
                .secondary_errors
                .iter()
                .map(|e| (e.key().clone(), *e.value()))
                .collect(),
            statement_mode: self
                .statement_mode
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            tables: self
                .by_table
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            capture: CaptureSnapshot {
                installed: self.capture.installed.load(Ordering::Relaxed),
                lockstep_events: self.capture.lockstep_events.load(Ordering::Relaxed),
                log_backlog: self.capture.log_backlog.load(Ordering::Relaxed),
                log_oldest_secs: self.capture.log_oldest_secs.load(Ordering::Relaxed),
                log_applied: self.capture.log_applied.load(Ordering::Relaxed),
                writes_outside_proxy: self.capture.writes_outside_proxy.load(Ordering::Relaxed),
                writes_outside_lockstep: self
                    .capture
                    .writes_outside_lockstep
                    .load(Ordering::Relaxed),
                lockstep_leftovers: self.capture.lockstep_leftovers.load(Ordering::Relaxed),
                log_error: self.capture.log_error.lock().ok().and_then(|e| e.clone()),
            },
        }
    }
}
