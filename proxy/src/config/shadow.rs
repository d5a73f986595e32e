//! The `[shadow]` section: how many reads are compared on the other database and the limits
//! that keep that work off the client's path.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Shadow reads: a sampled share of read-only statements run on both databases and compared.
/// Off while every rate is 0 (the default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// Share of eligible reads compared, 0 to 1 (`--shadow-sample-rate`).
    pub sample_rate: f64,
    /// Rates for single statement shapes, keyed by fingerprint as 16 hex digits (as shown in
    /// `/api/status`); they replace `sample_rate` for that shape.
    pub fingerprint_rates: BTreeMap<String, f64>,
    /// Share of eligible reads run twice on the old database (A/A): the noise floor of each
    /// statement shape when nothing differs but time.
    pub baseline_rate: f64,
    /// Comparisons running at once (each holds one connection per side).
    pub concurrency: usize,
    /// Sampled statements waiting for a free slot; beyond it they are dropped and counted.
    pub queue_size: usize,
    /// Comparisons started per second at most (0: no limit). The budget that keeps shadow
    /// work from taking the CPU and database time the clients need: beyond it, sampled
    /// statements wait in the queue and then are dropped.
    pub max_comparisons_per_sec: u64,
    /// statement_timeout of each shadow execution, on both sides, in ms.
    pub statement_timeout_ms: u64,
    /// Delay before a mismatch is checked again on both sides, in ms; only a mismatch that
    /// is still there is confirmed.
    pub recheck_delay_ms: u64,
    /// Confirmed mismatches kept for `/api/mismatches` (oldest dropped first).
    pub max_samples: usize,
    /// Differing rows kept per side in each sample.
    pub sample_rows: usize,
    /// Row hashes kept per result to find the differing rows; larger results are still
    /// compared (by running digests) but their differing rows are not listed.
    pub max_tracked_rows: usize,
    /// Show values in samples as keyed hashes (true) or as they are (false).
    pub redact: bool,
    /// Statement shapes counted separately; beyond it new shapes share one `other` entry.
    pub max_fingerprints: usize,
    /// Shapes (fingerprints as 16 hex digits) whose text sort is known to differ between
    /// the databases and was judged harmless: their collation differences are counted as
    /// `accepted`, not as confirmed mismatches. Every other difference still confirms.
    pub accept_collation: Vec<String>,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            sample_rate: 0.0,
            fingerprint_rates: BTreeMap::new(),
            baseline_rate: 0.0,
            concurrency: 2,
            queue_size: 128,
            max_comparisons_per_sec: 200,
            statement_timeout_ms: 2000,
            recheck_delay_ms: 500,
            max_samples: 100,
            sample_rows: 5,
            max_tracked_rows: 10_000,
            redact: true,
            max_fingerprints: 1000,
            accept_collation: Vec::new(),
        }
    }
}

impl ShadowConfig {
    /// True when any statement can be sampled.
    pub fn enabled(&self) -> bool {
        self.sample_rate > 0.0
            || self.baseline_rate > 0.0
            || self.fingerprint_rates.values().any(|r| *r > 0.0)
    }

    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    pub fn recheck_delay(&self) -> Duration {
        Duration::from_millis(self.recheck_delay_ms)
    }

    /// Per-fingerprint rates with parsed keys; bad keys are reported by `problems`.
    pub fn parsed_fingerprint_rates(&self) -> Vec<(u64, f64)> {
        self.fingerprint_rates
            .iter()
            .filter_map(|(k, r)| u64::from_str_radix(k, 16).ok().map(|fp| (fp, *r)))
            .collect()
    }

    /// Shapes whose collation differences are accepted; bad entries are reported by
    /// `problems`.
    pub fn parsed_accept_collation(&self) -> Vec<u64> {
        self.accept_collation
            .iter()
            .filter_map(|k| parse_fingerprint(k))
            .collect()
    }

    /// Every bad value, as (key below `shadow.`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !rate_ok(self.sample_rate) {
            out.push(("sample_rate".into(), "must be between 0 and 1".into()));
        }
        if !rate_ok(self.baseline_rate) {
            out.push(("baseline_rate".into(), "must be between 0 and 1".into()));
        }
        for (k, r) in &self.fingerprint_rates {
            if u64::from_str_radix(k, 16).is_err() || k.len() > 16 {
                out.push((
                    format!("fingerprint_rates.{k}"),
                    "key must be a fingerprint of up to 16 hex digits".into(),
                ));
            }
            if !rate_ok(*r) {
                out.push((
                    format!("fingerprint_rates.{k}"),
                    "must be between 0 and 1".into(),
                ));
            }
        }
        for (i, k) in self.accept_collation.iter().enumerate() {
            if parse_fingerprint(k).is_none() {
                out.push((
                    format!("accept_collation[{i}]"),
                    "must be a fingerprint of up to 16 hex digits, as shown in /api/status".into(),
                ));
            }
        }
        for (key, v) in [
            ("concurrency", self.concurrency),
            ("queue_size", self.queue_size),
            ("statement_timeout_ms", self.statement_timeout_ms as usize),
            ("max_samples", self.max_samples),
            ("max_fingerprints", self.max_fingerprints),
        ] {
            if v == 0 {
                out.push((key.into(), "must be at least 1".into()));
            }
        }
        out
    }
}

/// A fingerprint as shown in `/api/status`: up to 16 hex digits.
fn parse_fingerprint(k: &str) -> Option<u64> {
    if k.is_empty() || k.len() > 16 {
        return None;
    }
    u64::from_str_radix(k, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = ShadowConfig::default();
        assert!(!c.enabled());
        assert!(c.problems().is_empty());
    }

    #[test]
    fn bad_values_are_all_reported() {
        let mut c = ShadowConfig {
            sample_rate: 1.5,
            concurrency: 0,
            ..Default::default()
        };
        c.fingerprint_rates.insert("xyz".into(), 0.5);
        c.fingerprint_rates.insert("00ff".into(), 2.0);
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                "sample_rate",
                "fingerprint_rates.00ff",
                "fingerprint_rates.xyz",
                "concurrency"
            ]
        );
        assert_eq!(c.parsed_fingerprint_rates(), vec![(0xff, 2.0)]);
    }

    #[test]
    fn accepted_collation_shapes_are_fingerprints() {
        let c = ShadowConfig {
            accept_collation: vec![
                "00000000000000ff".into(),
                "not-hex".into(),
                "0123456789abcdef0".into(),
            ],
            ..Default::default()
        };
        assert_eq!(c.parsed_accept_collation(), vec![0xff]);
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["accept_collation[1]", "accept_collation[2]"]);
    }
}
