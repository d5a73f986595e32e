//! The reconciler's configuration: the two database URLs (top-level keys, shared with the
//! proxy's file) and its own settings under `[reconciler]`.

use serde::Deserialize;
use std::time::Duration;
use switchyard_core::config_layer::{ConfigError, Origin, Validate};
use switchyard_core::diff::DiffOptions;
use switchyard_core::ident::QualifiedName;

/// Everything the reconciler reads at start. Top-level keys other than `old` and `new`
/// belong to the other binaries (one file can serve them all) and are ignored here; the
/// `[reconciler]` table is checked strictly.
#[derive(Debug, Clone, Deserialize)]
pub struct ReconcilerConfig {
    /// URL of the old database, e.g. `postgres://u:p@host:5432/db`.
    pub old: String,
    /// URL of the new database.
    pub new: String,
    #[serde(default)]
    pub reconciler: ReconcilerSettings,
    /// `[retry_log]`, shared with the proxy: where `replay` finds the records.
    #[serde(default)]
    pub retry_log: switchyard_core::retry_kafka::RetryLogConfig,
}

/// `[reconciler]`: how verify and repair work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerSettings {
    /// Tables to handle (`schema.table`, or `table` for `public.table`); empty means every
    /// user table on either side.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Ranges checked at once; each uses one connection to each database.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// Rows per range in the first pass.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// A mismatching range with at most this many rows is compared row by row.
    #[serde(default = "default_leaf_rows")]
    pub leaf_rows: u64,
    /// Pieces a mismatching range is cut into.
    #[serde(default = "default_bisection_factor")]
    pub bisection_factor: u64,
    /// Differing keys listed per table; beyond that they are counted only.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Times a differing row is re-read (after `recheck_delay_ms`) before it is reported.
    #[serde(default = "default_rechecks")]
    pub rechecks: u32,
    /// Pause before each re-read, in milliseconds.
    #[serde(default = "default_recheck_delay_ms")]
    pub recheck_delay_ms: u64,
}

fn default_jobs() -> usize {
    4
}
fn default_chunk_rows() -> u64 {
    DiffOptions::default().chunk_rows
}
fn default_leaf_rows() -> u64 {
    DiffOptions::default().leaf_rows
}
fn default_bisection_factor() -> u64 {
    DiffOptions::default().bisection_factor
}
fn default_max_keys() -> usize {
    DiffOptions::default().max_keys
}
fn default_rechecks() -> u32 {
    DiffOptions::default().rechecks
}
fn default_recheck_delay_ms() -> u64 {
    DiffOptions::default().recheck_delay.as_millis() as u64
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            tables: Vec::new(),
            jobs: default_jobs(),
            chunk_rows: default_chunk_rows(),
            leaf_rows: default_leaf_rows(),
            bisection_factor: default_bisection_factor(),
            max_keys: default_max_keys(),
            rechecks: default_rechecks(),
            recheck_delay_ms: default_recheck_delay_ms(),
        }
    }
}

impl ReconcilerConfig {
    /// The diff tuning these settings describe.
    pub fn diff_options(&self) -> DiffOptions {
        let s = &self.reconciler;
        DiffOptions {
            chunk_rows: s.chunk_rows,
            leaf_rows: s.leaf_rows,
            bisection_factor: s.bisection_factor,
            max_keys: s.max_keys,
            rechecks: s.rechecks,
            recheck_delay: Duration::from_millis(s.recheck_delay_ms),
            row_hash: None,
        }
    }

    /// The `tables` setting parsed (validated already, so parsing succeeds).
    pub fn table_names(&self) -> Vec<QualifiedName> {
        self.reconciler
            .tables
            .iter()
            .filter_map(|t| QualifiedName::parse(t).ok())
            .collect()
    }
}

impl Validate for ReconcilerConfig {
    fn validate(&self, errors: &mut Vec<ConfigError>, origin_of: &dyn Fn(&str) -> Origin) {
        switchyard_core::config_layer::validate_urls(&self.old, &self.new, errors, origin_of);
        self.retry_log.validate("retry_log", errors, origin_of);
        let mut bad =
            |key: &str, message: String| errors.push(ConfigError::at(key, origin_of, message));
        let s = &self.reconciler;
        for t in &s.tables {
            if let Err(e) = QualifiedName::parse(t) {
                bad("reconciler.tables", e.to_string());
            }
        }
        if s.jobs == 0 || s.jobs > 64 {
            bad("reconciler.jobs", "must be between 1 and 64".into());
        }
        if s.chunk_rows == 0 {
            bad("reconciler.chunk_rows", "must be at least 1".into());
        }
        if s.leaf_rows == 0 {
            bad("reconciler.leaf_rows", "must be at least 1".into());
        }
        if s.bisection_factor < 2 {
            bad("reconciler.bisection_factor", "must be at least 2".into());
        }
    }
}
