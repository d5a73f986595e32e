//! Shadow reads (issue #5): a sampled share of the client's read-only statements is run on
//! both databases off the client's path and the results compared, with noise filtered by a
//! re-check. See `docs/shadow-reads.md`.
//!
//! - `sample`: the sampling decision (pure); `tap`: what a session does on its path (decide,
//!   copy the statement, `try_send`);
//! - `analyze`: which statements may run and how their results compare (pure);
//!   `settings`: the session settings replayed with them;
//! - `normalize` and `digest`: value normalization, streaming row hashes, the comparator
//!   (pure);
//! - `exec`: running one statement on one database over the proxy's own protocol code;
//!   `worker`: the bounded pool of comparisons and the re-check;
//! - `stats` and `samples`: counters by fingerprint and the ring of confirmed mismatches;
//!   `collation`: text sorts that differ, per shape, and the shapes accepted.

pub mod analyze;
pub mod collation;
pub mod digest;
pub mod error;
pub mod exec;
pub mod job;
pub mod normalize;
pub mod sample;
pub mod samples;
pub mod settings;
pub mod stats;
pub mod tap;
mod worker;

pub use crate::config::ShadowConfig;
pub use tap::ShadowTap;

use crate::backend::{ConnectOptions, Db};
use analyze::Analysis;
use dashmap::DashMap;
use exec::Pool;
use job::Job;
use sample::{Kind, Sampler};
use samples::{MismatchSample, Redactor, Samples};
use serde::Serialize;
use stats::{Counts, FingerprintStats, Stats, QUEUE_TOTAL};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use switchyard_core::dsn::Dsn;
use tokio::sync::mpsc;

/// Statement texts whose analysis is cached; cleared when full (shapes are few).
const ANALYSIS_CACHE_MAX: usize = 10_000;

/// Shadow-read state shared by every session and the workers.
pub struct Shadow {
    pub config: ShadowConfig,
    sampler: Sampler,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Re-checks have their own queue, served first: under a flood of new samples a
    /// mismatch must still get its second look.
    recheck_tx: mpsc::Sender<Job>,
    recheck_rx: Mutex<Option<mpsc::Receiver<Job>>>,
    pub stats: Stats,
    pub samples: Samples,
    redactor: Redactor,
    old: Pool,
    /// A second pool to old for A/A baselines, so both sides run at the same moment.
    old_again: Pool,
    new: Pool,
    analyses: DashMap<Arc<str>, Arc<Analysis>>,
    /// Shapes whose collation differences are accepted (`accept_collation`).
    accept_collation: HashSet<u64>,
    max_message_size: usize,
    pushed: metrics::Counter,
    dropped: metrics::Counter,
}

impl Shadow {
    /// The shared state, or None when no statement can be sampled.
    pub fn new(
        config: &ShadowConfig,
        old: &Dsn,
        new: &Dsn,
        opts: ConnectOptions,
    ) -> Option<Arc<Self>> {
        if !config.enabled() {
            return None;
        }
        // Resolve counter handles against the real recorder, not the no-op one.
        let _ = crate::metrics::handle();
        let (tx, rx) = mpsc::channel(config.queue_size);
        let (recheck_tx, recheck_rx) = mpsc::channel(config.queue_size);
        let idle = config.concurrency;
        let timeout = config.statement_timeout();
        Some(Arc::new(Shadow {
            sampler: Sampler {
                rate: config.sample_rate,
                per_fingerprint: config.parsed_fingerprint_rates().into_iter().collect(),
                baseline_rate: config.baseline_rate,
            },
            tx,
            rx: Mutex::new(Some(rx)),
            recheck_tx,
            recheck_rx: Mutex::new(Some(recheck_rx)),
            stats: Stats::new(config.max_fingerprints),
            samples: Samples::new(config.max_samples),
            redactor: Redactor::new(rand::random(), config.redact),
            old: Pool::new(Db::Old, old.clone(), opts.clone(), idle, timeout),
            old_again: Pool::new(Db::Old, old.clone(), opts.clone(), idle, timeout),
            new: Pool::new(Db::New, new.clone(), opts.clone(), idle, timeout),
            analyses: DashMap::new(),
            accept_collation: config.parsed_accept_collation().into_iter().collect(),
            max_message_size: opts.max_message_size,
            pushed: metrics::counter!(QUEUE_TOTAL, "event" => "pushed"),
            dropped: metrics::counter!(QUEUE_TOTAL, "event" => "dropped"),
            config: config.clone(),
        }))
    }

    /// The sampling decision for one eligible statement (on the client's path: two random
    /// numbers and, with per-fingerprint rates, one map lookup).
    pub fn decide(&self, fingerprint: u64) -> Option<Kind> {
        self.sampler
            .decide(fingerprint, rand::random::<f64>(), rand::random::<f64>())
    }

    /// The sampling decision for a statement about to be copied into a job: None also when
    /// the queue is full, counted as a drop, so a saturated shadow costs the session no
    /// copying (a sampling rate beyond the budget is the normal case at 100 %).
    pub fn decide_with_room(&self, fingerprint: u64) -> Option<Kind> {
        let kind = self.decide(fingerprint)?;
        if self.tx.capacity() == 0 {
            self.count_drop();
            return None;
        }
        Some(kind)
    }

    /// Queues a job without waiting: a full queue drops it and counts the drop.
    pub fn submit(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                self.pushed.increment(1);
                true
            }
            Err(_) => {
                self.count_drop();
                false
            }
        }
    }

    fn count_drop(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped.increment(1);
    }

    /// Runs the workers until the task is aborted (at shutdown). Only the first call runs.
    pub async fn run(self: Arc<Self>) {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let recheck_rx = self.recheck_rx.lock().ok().and_then(|mut r| r.take());
        if let (Some(rx), Some(recheck_rx)) = (rx, recheck_rx) {
            worker::dispatch(self, rx, recheck_rx).await;
        }
    }

    fn analysis(&self, sql: &Arc<str>) -> Arc<Analysis> {
        if let Some(a) = self.analyses.get(sql) {
            return a.clone();
        }
        let a = Arc::new(analyze::analyze(sql));
        if self.analyses.len() >= ANALYSIS_CACHE_MAX {
            self.analyses.clear();
        }
        self.analyses.insert(sql.clone(), a.clone());
        a
    }

    /// The `shadow` section of `/api/status`.
    pub fn snapshot(&self) -> ShadowSnapshot {
        let (totals, baseline) = self.stats.totals();
        ShadowSnapshot {
            sample_rate: self.config.sample_rate,
            baseline_rate: self.config.baseline_rate,
            redact: self.config.redact,
            queue: QueueSnapshot {
                capacity: self.config.queue_size,
                pushed: self.stats.pushed.load(Ordering::Relaxed),
                popped: self.stats.popped.load(Ordering::Relaxed),
                dropped: self.stats.dropped.load(Ordering::Relaxed),
                rechecks_pending: self.stats.rechecks_pending.load(Ordering::Relaxed),
                rechecks_dropped: self.stats.rechecks_dropped.load(Ordering::Relaxed),
            },
            totals,
            baseline,
            fingerprints: self.stats.fingerprints(),
        }
    }

    /// Whether the operator accepted collation differences of this shape.
    pub fn accepts_collation(&self, fingerprint: u64) -> bool {
        self.accept_collation.contains(&fingerprint)
    }

    /// `/api/mismatches`.
    pub fn mismatches(&self) -> MismatchesView {
        MismatchesView {
            redacted: self.redactor.redacts(),
            samples: self.samples.list(),
            collation: collation::shapes(&self.stats.fingerprints(), &self.accept_collation),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct QueueSnapshot {
    pub capacity: usize,
    pub pushed: u64,
    pub popped: u64,
    pub dropped: u64,
    pub rechecks_pending: u64,
    pub rechecks_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct ShadowSnapshot {
    pub sample_rate: f64,
    pub baseline_rate: f64,
    pub redact: bool,
    pub queue: QueueSnapshot,
    pub totals: Counts,
    pub baseline: Counts,
    pub fingerprints: BTreeMap<String, FingerprintStats>,
}

#[derive(Debug, Serialize)]
pub struct MismatchesView {
    pub redacted: bool,
    pub samples: Vec<MismatchSample>,
    /// Query shapes whose text sort differs between the databases.
    pub collation: Vec<collation::CollationShape>,
}
