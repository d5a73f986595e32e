//! Which of a session's reads the cutover sends to new: in `canary` (sessions whose draw
//! falls under the percentage) and `reads-new`, a single read-only statement in autocommit
//! (simple protocol). Reads inside a transaction stay on old with its writes; so do
//! statements that touch session state on old (advisory locks, currval, temporary tables).

use super::reader::Reader;
use crate::classify::{Classified, StatementClass};
use crate::shadow::settings::Settings;
use crate::shared::Shared;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// After a failed connect to new, reads stay on old this long before the next attempt.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);

/// Functions whose effect or answer belongs to the session on old: calling them on new
/// would take a lock nobody else sees or read state that exists only there.
const OLD_SESSION_FUNCTIONS: &[&str] = &[
    "advisory",
    "currval",
    "lastval",
    "set_config",
    "pg_notify",
    "txid_",
    "pg_current_xact",
    "pg_backend_pid",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_export_snapshot",
    "pg_stat_",
];

pub(crate) struct Route {
    /// Dual writes are on (new follows old), so routing is possible at all.
    enabled: bool,
    /// The session's sticky canary draw, 0..100.
    draw: u8,
    /// The request handed to the mediator is a read for new.
    pub(crate) pending: bool,
    pub(crate) reader: Option<Reader>,
    pub(crate) settings: Settings,
    pub(crate) startup: Vec<(String, String)>,
    /// The session created temporary objects, which exist on old only: its reads stay
    /// there.
    pinned: bool,
    connect_failed: Option<Instant>,
}

impl Route {
    pub(crate) fn new(
        shared: &Shared,
        startup: Vec<(String, String)>,
        server_params: &[(String, String)],
    ) -> Self {
        Route {
            enabled: shared.mirror.is_some(),
            draw: rand::random::<u8>() % 100,
            pending: false,
            reader: None,
            settings: Settings::from_startup(server_params),
            startup,
            pinned: false,
            connect_failed: None,
        }
    }

    /// Follows a statement the session runs on old (settings, temporary objects).
    pub(crate) fn observe(&mut self, sql: &str, classes: &[Classified]) {
        if !self.enabled {
            return;
        }
        self.settings.observe(sql);
        if !self.pinned
            && classes
                .iter()
                .any(|c| matches!(c.class, StatementClass::Ddl | StatementClass::Other))
            && contains_ignore_case(sql, "temp")
        {
            self.pinned = true;
        }
    }

    /// Whether this session's reads go to new now.
    pub(crate) fn reads_new(&self, shared: &Shared) -> bool {
        self.enabled
            && !self.pinned
            && shared.cutover.reads_from_new(self.draw)
            && self
                .connect_failed
                .is_none_or(|t| t.elapsed() >= RETRY_CONNECT_AFTER)
            && shared
                .mirror
                .as_ref()
                .is_some_and(|m| m.status.retry_backlog.load(Ordering::Relaxed) == 0)
    }

    pub(crate) fn connect_failed(&mut self) {
        self.connect_failed = Some(Instant::now());
    }
}

/// Whether a statement may be answered by new: one read-only statement that calls nothing
/// tied to the session on old.
pub(crate) fn routable(sql: &str, classes: &[Classified]) -> bool {
    classes.len() == 1
        && classes[0].class == StatementClass::Read
        && classes[0].parsed
        && !(classes[0].calls_functions
            && OLD_SESSION_FUNCTIONS
                .iter()
                .any(|f| contains_ignore_case(sql, f)))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let n = needle.as_bytes();
    haystack
        .as_bytes()
        .windows(n.len())
        .any(|w| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(calls: bool) -> Classified {
        Classified {
            class: StatementClass::Read,
            fingerprint: 0,
            parsed: true,
            calls_functions: calls,
        }
    }

    #[test]
    fn session_bound_functions_stay_on_old() {
        assert!(routable("SELECT * FROM t", &[read(false)]));
        assert!(routable("SELECT upper(x) FROM t", &[read(true)]));
        assert!(!routable("SELECT pg_advisory_lock(1)", &[read(true)]));
        assert!(!routable("select CURRVAL('s')", &[read(true)]));
        assert!(!routable("SELECT 1; SELECT 2", &[read(false), read(false)]));
        let mut w = read(false);
        w.class = StatementClass::Write;
        assert!(!routable("SELECT 1 FOR UPDATE", &[w]));
    }
}
