//! Counters by statement fingerprint for `/api/status`, mirrored to Prometheus. Updated by
//! the shadow workers; the client's path only touches the queue counters.

use super::sample::Kind;
use dashmap::DashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const COMPARISONS_TOTAL: &str = "switchyard_shadow_comparisons_total";
pub const QUEUE_TOTAL: &str = "switchyard_shadow_queue_total";
pub const DURATION: &str = "switchyard_shadow_query_duration_seconds";
pub const RECHECKS_PENDING: &str = "switchyard_shadow_rechecks_pending";
/// Confirmed mismatches by difference (`rows`, `collation`, ...), kind and fingerprint.
pub const MISMATCHES_TOTAL: &str = "switchyard_shadow_mismatches_total";

/// Fingerprint of the shared entry for shapes beyond `max_fingerprints`.
pub const OTHER: u64 = 0;

/// What happened to one sampled statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Matched,
    /// Differed, then matched on the re-check.
    Transient,
    /// Differed twice.
    Confirmed(&'static str),
    /// Differed twice in a way the operator accepted for this shape (a collation
    /// difference listed in `shadow.accept_collation`): seen, not a mismatch.
    Accepted(&'static str),
    Error(&'static str),
    Skipped(&'static str),
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Transient => "transient",
            Outcome::Confirmed(_) => "confirmed",
            Outcome::Accepted(_) => "accepted",
            Outcome::Error(_) => "error",
            Outcome::Skipped(_) => "skipped",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub sampled: u64,
    pub matched: u64,
    pub confirmed: u64,
    /// Confirmed differences of a kind accepted for the shape (collation).
    pub accepted: u64,
    pub transient: u64,
    pub errors: u64,
    pub skipped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
    #[serde(skip)]
    total_us: u64,
}

impl Latency {
    fn add(&mut self, d: Duration) {
        let us = d.as_micros() as u64;
        self.count += 1;
        self.total_us += us;
        self.mean_ms = self.total_us as f64 / self.count as f64 / 1000.0;
        self.max_ms = self.max_ms.max(us as f64 / 1000.0);
    }
}

/// One statement shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FingerprintStats {
    /// The statement with constants replaced by `$n`.
    pub query: String,
    #[serde(flatten)]
    pub shadow: Counts,
    /// A/A comparisons (old against old): the noise floor of this shape.
    pub baseline: Counts,
    pub old_latency: Latency,
    pub new_latency: Latency,
    /// Confirmed mismatches by difference.
    pub differences: BTreeMap<&'static str, u64>,
    /// Accepted differences by difference (only `collation` can be accepted).
    pub accepted_differences: BTreeMap<&'static str, u64>,
    pub error_kinds: BTreeMap<&'static str, u64>,
    pub skip_reasons: BTreeMap<&'static str, u64>,
    /// Comparisons under an ORDER BY whose order could not be checked, by reason.
    pub order_unchecked: BTreeMap<&'static str, u64>,
}

/// Everything counted.
pub struct Stats {
    by_fingerprint: DashMap<u64, FingerprintStats>,
    max_fingerprints: usize,
    pub pushed: AtomicU64,
    pub popped: AtomicU64,
    pub dropped: AtomicU64,
    pub rechecks_pending: AtomicU64,
    pub rechecks_dropped: AtomicU64,
    /// When a comparison last confirmed a mismatch (None: never).
    last_confirmed: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Stats {
    pub fn new(max_fingerprints: usize) -> Self {
        Stats {
            by_fingerprint: DashMap::new(),
            max_fingerprints,
            pushed: AtomicU64::new(0),
            popped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rechecks_pending: AtomicU64::new(0),
            rechecks_dropped: AtomicU64::new(0),
            last_confirmed: std::sync::Mutex::new(None),
        }
    }

    /// Runs `f` on the entry of `fingerprint` (or the shared one when the map is full).
    fn with<R>(
        &self,
        fingerprint: u64,
        query: &str,
        f: impl FnOnce(&mut FingerprintStats) -> R,
    ) -> R {
        let key = if self.by_fingerprint.contains_key(&fingerprint)
            || self.by_fingerprint.len() < self.max_fingerprints
        {
            fingerprint
        } else {
            OTHER
        };
        let mut e = self.by_fingerprint.entry(key).or_default();
        if e.query.is_empty() {
            e.query = if key == OTHER {
                "<other statement shapes>".into()
            } else {
                query.to_string()
            };
        }
        f(&mut e)
    }

    /// Whether old and new answered a statement of this shape differently, confirmed.
    pub fn confirmed(&self, fingerprint: u64) -> bool {
        self.by_fingerprint
            .get(&fingerprint)
            .is_some_and(|e| e.shadow.confirmed > 0)
    }

    /// How many comparisons of this shape confirmed a mismatch.
    pub fn confirmed_count(&self, fingerprint: u64) -> u64 {
        self.by_fingerprint
            .get(&fingerprint)
            .map_or(0, |e| e.shadow.confirmed)
    }

    /// The shape's text (constants replaced by `$n`), if it was seen.
    pub fn query_of(&self, fingerprint: u64) -> Option<String> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|e| e.query.clone())
    }

    pub fn sampled(&self, fingerprint: u64, kind: Kind, query: &str) {
        self.with(fingerprint, query, |e| counts(e, kind).sampled += 1);
        metrics::counter!(COMPARISONS_TOTAL, "kind" => kind.as_str(), "outcome" => "sampled")
            .increment(1);
    }

    /// How long ago a comparison last confirmed a mismatch.
    pub fn since_confirmed(&self) -> Option<Duration> {
        self.last_confirmed
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    pub fn outcome(&self, fingerprint: u64, kind: Kind, query: &str, outcome: Outcome) {
        if matches!((kind, &outcome), (Kind::Shadow, Outcome::Confirmed(_))) {
            if let Ok(mut t) = self.last_confirmed.lock() {
                *t = Some(std::time::Instant::now());
            }
        }
        self.with(fingerprint, query, |e| {
            let c = counts(e, kind);
            match outcome {
                Outcome::Matched => c.matched += 1,
                Outcome::Transient => c.transient += 1,
                Outcome::Confirmed(_) => c.confirmed += 1,
                Outcome::Accepted(_) => c.accepted += 1,
                Outcome::Error(_) => c.errors += 1,
                Outcome::Skipped(_) => c.skipped += 1,
            }
            match outcome {
                Outcome::Confirmed(d) => *e.differences.entry(d).or_default() += 1,
                Outcome::Accepted(d) => *e.accepted_differences.entry(d).or_default() += 1,
                Outcome::Error(k) => *e.error_kinds.entry(k).or_default() += 1,
                Outcome::Skipped(r) => *e.skip_reasons.entry(r).or_default() += 1,
                _ => {}
            }
        });
        metrics::counter!(COMPARISONS_TOTAL,
            "kind" => kind.as_str(),
            "outcome" => outcome.label(),
            "fingerprint" => format!("{fingerprint:016x}"))
        .increment(1);
        if let Outcome::Confirmed(d) = outcome {
            metrics::counter!(MISMATCHES_TOTAL,
                "kind" => kind.as_str(),
                "difference" => d,
                "fingerprint" => format!("{fingerprint:016x}"))
            .increment(1);
        }
    }

    pub fn latency(&self, fingerprint: u64, query: &str, side: &'static str, d: Duration) {
        self.with(fingerprint, query, |e| {
            if side == "new" {
                e.new_latency.add(d)
            } else {
                e.old_latency.add(d)
            }
        });
        metrics::histogram!(DURATION, "side" => side).record(d.as_secs_f64());
    }

    pub fn order_unchecked(&self, fingerprint: u64, query: &str, reason: &'static str) {
        self.with(fingerprint, query, |e| {
            *e.order_unchecked.entry(reason).or_default() += 1
        });
    }

    pub fn recheck_started(&self) {
        let n = self.rechecks_pending.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(RECHECKS_PENDING).set(n as f64);
    }

    pub fn recheck_finished(&self) {
        let n = self
            .rechecks_pending
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(RECHECKS_PENDING).set(n as f64);
    }

    pub fn fingerprints(&self) -> BTreeMap<String, FingerprintStats> {
        self.by_fingerprint
            .iter()
            .map(|e| (format!("{:016x}", e.key()), e.value().clone()))
            .collect()
    }

    /// Sums over all fingerprints: (shadow, baseline).
    pub fn totals(&self) -> (Counts, Counts) {
        let mut s = Counts::default();
        let mut b = Counts::default();
        for e in self.by_fingerprint.iter() {
            add(&mut s, &e.shadow);
            add(&mut b, &e.baseline);
        }
        (s, b)
    }
}

fn counts(e: &mut FingerprintStats, kind: Kind) -> &mut Counts {
    match kind {
        Kind::Shadow => &mut e.shadow,
        Kind::Baseline => &mut e.baseline,
    }
}

fn add(to: &mut Counts, c: &Counts) {
    to.sampled += c.sampled;
    to.matched += c.matched;
    to.confirmed += c.confirmed;
    to.accepted += c.accepted;
    to.transient += c.transient;
    to.errors += c.errors;
    to.skipped += c.skipped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_fingerprint_and_bounded() {
        let s = Stats::new(2);
        s.sampled(1, Kind::Shadow, "SELECT $1");
        s.outcome(1, Kind::Shadow, "SELECT $1", Outcome::Confirmed("rows"));
        s.outcome(2, Kind::Baseline, "SELECT b", Outcome::Transient);
        s.outcome(3, Kind::Shadow, "SELECT c", Outcome::Error("timeout"));
        let f = s.fingerprints();
        assert_eq!(f.len(), 3, "a third shape goes to the shared entry: {f:?}");
        assert_eq!(f["0000000000000000"].shadow.errors, 1);
        let one = &f["0000000000000001"];
        assert_eq!((one.shadow.sampled, one.shadow.confirmed), (1, 1));
        assert_eq!(one.differences["rows"], 1);
        assert_eq!(f["0000000000000002"].baseline.transient, 1);
        let (shadow, baseline) = s.totals();
        assert_eq!((shadow.confirmed, baseline.transient), (1, 1));
        let s = Stats::new(1);
        for fp in 5..10 {
            s.outcome(fp, Kind::Shadow, "a", Outcome::Matched);
        }
        assert_eq!(s.fingerprints().len(), 2, "one shape plus the shared entry");
        assert_eq!(s.fingerprints()["0000000000000000"].shadow.matched, 4);
    }

    #[test]
    fn accepted_is_seen_but_not_a_mismatch() {
        let s = Stats::new(10);
        s.sampled(7, Kind::Shadow, "SELECT name FROM t ORDER BY name");
        s.outcome(7, Kind::Shadow, "q", Outcome::Accepted("collation"));
        // What the cutover's pre-flight and the canary look at.
        assert!(!s.confirmed(7));
        assert_eq!(s.confirmed_count(7), 0);
        assert!(s.since_confirmed().is_none());
        let e = &s.fingerprints()["0000000000000007"];
        assert_eq!((e.shadow.accepted, e.shadow.confirmed), (1, 0));
        assert_eq!(e.accepted_differences["collation"], 1);
        assert!(e.differences.is_empty());
        s.outcome(7, Kind::Shadow, "q", Outcome::Confirmed("collation"));
        assert_eq!(s.confirmed_count(7), 1);
        assert!(s.since_confirmed().is_some());
        assert_eq!(s.totals().0.accepted, 1);
    }
}
