//! This process's session and statement counts since it started: sessions bump them, the
//! status API and the dashboard's history read them. The Prometheus counters are
//! process-wide and split by label; these are the plain totals the pages show.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

pub struct Counters {
    pub sessions_active: AtomicUsize,
    pub sessions_total: AtomicU64,
    /// Statements seen from clients.
    pub statements_total: AtomicU64,
    pub started: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            sessions_active: AtomicUsize::new(0),
            sessions_total: AtomicU64::new(0),
            statements_total: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}
