//! Which of a session's reads the cutover sends to new: in `canary` (sessions whose draw
//! falls under the percentage) and `reads-new`, a single read-only statement in autocommit:
//! a simple Query, or an extended-protocol batch (through its Sync) whose every Execute
//! runs such a statement, bound in the same batch. Reads inside a transaction stay on old
//! with its writes; so do statements that touch session state on old (advisory locks,
//! currval, temporary tables).

use super::reader::Reader;
use crate::classify::{Classified, StatementClass};
use crate::shadow::settings::Settings;
use crate::shared::Shared;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
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
    /// The Parse message of each named statement the session has, as the client sent it:
    /// what prepares it on new when a routed batch binds it.
    pub(crate) parses: HashMap<String, Bytes>,
    /// Named statements that are routable reads.
    routable_statements: HashSet<String>,
    /// The extended-protocol batch being scanned.
    batch: Batch,
}

/// What the scan of an extended-protocol batch found so far.
#[derive(Default)]
enum Batch {
    #[default]
    Empty,
    /// Only routable reads: the statements parsed and portals bound in it.
    Reads {
        parsed: HashSet<String>,
        portals: HashSet<String>,
        executes: u32,
    },
    /// Something that must run on old.
    No,
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
            parses: HashMap::new(),
            routable_statements: HashSet::new(),
            batch: Batch::Empty,
        }
    }

    fn reads(&mut self) -> Option<(&mut HashSet<String>, &mut HashSet<String>, &mut u32)> {
        if let Batch::Empty = self.batch {
            self.batch = Batch::Reads {
                parsed: HashSet::new(),
                portals: HashSet::new(),
                executes: 0,
            };
        }
        match &mut self.batch {
            Batch::Reads {
                parsed,
                portals,
                executes,
            } => Some((parsed, portals, executes)),
            _ => None,
        }
    }

    fn statement_routable(&self, parsed: &HashSet<String>, name: &str) -> bool {
        // The unnamed statement only if parsed in the same batch (new's may be older).
        parsed.contains(name) || (!name.is_empty() && self.routable_statements.contains(name))
    }

    /// A Parse; `raw` is the whole message.
    pub(crate) fn on_parse(&mut self, name: &str, raw: Bytes, routable: bool) {
        if !self.enabled {
            return;
        }
        if !name.is_empty() {
            self.parses.insert(name.to_string(), raw);
            if routable {
                self.routable_statements.insert(name.to_string());
            } else {
                self.routable_statements.remove(name);
            }
        }
        match self.reads() {
            Some((parsed, _, _)) if routable => {
                parsed.insert(name.to_string());
            }
            _ => self.batch = Batch::No,
        }
    }

    pub(crate) fn on_bind(&mut self, portal: &str, statement: &str) {
        if !self.enabled {
            return;
        }
        let ok = match &self.batch {
            Batch::Reads { parsed, .. } => self.statement_routable(parsed, statement),
            Batch::Empty => self.statement_routable(&HashSet::new(), statement),
            Batch::No => false,
        };
        match self.reads() {
            Some((_, portals, _)) if ok => {
                portals.insert(portal.to_string());
            }
            _ => self.batch = Batch::No,
        }
    }

    /// A Describe of a statement (`S`) or portal (`P`).
    pub(crate) fn on_describe(&mut self, kind: u8, name: &str) {
        if !self.enabled {
            return;
        }
        let ok = match &self.batch {
            Batch::Reads {
                parsed, portals, ..
            } => {
                if kind == b'S' {
                    self.statement_routable(parsed, name)
                } else {
                    portals.contains(name)
                }
            }
            Batch::Empty => kind == b'S' && self.statement_routable(&HashSet::new(), name),
            Batch::No => false,
        };
        if !ok || self.reads().is_none() {
            self.batch = Batch::No;
        }
    }

    pub(crate) fn on_execute(&mut self, portal: &str) {
        if !self.enabled {
            return;
        }
        match self.reads() {
            Some((_, portals, executes)) if portals.contains(portal) => *executes += 1,
            _ => self.batch = Batch::No,
        }
    }

    /// A Close of a statement (`S`) or portal.
    pub(crate) fn on_close(&mut self, kind: u8, name: &str) {
        if !self.enabled {
            return;
        }
        if kind == b'S' {
            self.parses.remove(name);
            self.routable_statements.remove(name);
        }
        self.batch = Batch::No;
    }

    /// Any other message inside a batch (Flush, FunctionCall, copy data...).
    pub(crate) fn on_other(&mut self) {
        self.batch = Batch::No;
    }

    /// At the batch's Sync (or a Query, which ends it too): whether it held only routable
    /// reads, at least one executed. The scan starts over.
    pub(crate) fn end_batch(&mut self) -> bool {
        matches!(
            std::mem::take(&mut self.batch),
            Batch::Reads { executes, .. } if executes > 0
        )
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
