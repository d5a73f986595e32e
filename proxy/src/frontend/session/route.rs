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
use crate::NameMap;
use bytes::Bytes;

type NameSet = std::collections::HashSet<String, foldhash::fast::RandomState>;
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
    /// The session's primary is new (writes-new): its reads are there already.
    pub(crate) primary_new: bool,
    /// The client's cancel key and where its cancels go normally (the primary): a read
    /// answered by new points them at new too meanwhile.
    pub(crate) cancel: Option<(crate::cancel::SessionKey, crate::cancel::CancelTarget)>,
    live: std::sync::Arc<crate::cutover::Live>,
    /// The session's sticky canary draw, 0..100.
    draw: u8,
    /// The request handed to the mediator is a read for new.
    pub(crate) pending: bool,
    pub(crate) reader: Option<Reader>,
    pub(crate) settings: Settings,
    /// Everything a move to the other database must set up again.
    pub(crate) carry: super::carry::Carry,
    pub(crate) startup: Vec<(String, String)>,
    /// The session created temporary objects, which exist on old only: its reads stay
    /// there.
    pinned: bool,
    connect_failed: Option<Instant>,
    /// The Parse message of each named statement the session has, as the client sent it:
    /// what prepares it on new when a routed batch binds it.
    pub(crate) parses: NameMap<Bytes>,
    /// Named statements that are routable reads, with their shape's fingerprint.
    routable_statements: NameMap<u64>,
    /// The extended-protocol batch being scanned.
    batch: Batch,
}

impl Drop for Route {
    fn drop(&mut self) {
        if self.pinned {
            self.live.gate.unpin();
        }
    }
}

/// What the scan of an extended-protocol batch found so far.
#[derive(Default)]
enum Batch {
    #[default]
    Empty,
    /// Only routable reads: the statements parsed (with their fingerprints) and portals
    /// bound in it, and the shapes it runs.
    Reads {
        parsed: NameMap<u64>,
        portals: NameSet,
        executes: u32,
        shapes: Vec<u64>,
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
            primary_new: false,
            cancel: None,
            live: shared.cutover.clone(),
            draw: rand::random::<u8>() % 100,
            pending: false,
            reader: None,
            settings: Settings::from_startup(server_params),
            carry: Default::default(),
            startup,
            pinned: false,
            connect_failed: None,
            parses: NameMap::default(),
            routable_statements: NameMap::default(),
            batch: Batch::Empty,
        }
    }

    #[allow(clippy::type_complexity)]
    fn reads(&mut self) -> Option<(&mut NameMap<u64>, &mut NameSet, &mut u32, &mut Vec<u64>)> {
        if let Batch::Empty = self.batch {
            self.batch = Batch::Reads {
                parsed: NameMap::default(),
                portals: NameSet::default(),
                executes: 0,
                shapes: Vec::new(),
            };
        }
        match &mut self.batch {
            Batch::Reads {
                parsed,
                portals,
                executes,
                shapes,
            } => Some((parsed, portals, executes, shapes)),
            _ => None,
        }
    }

    /// The fingerprint of a statement a routed batch may run: parsed in the batch, or a
    /// named routable one (the unnamed statement only if parsed in the same batch: new's
    /// may be older).
    fn statement_shape(&self, parsed: Option<&NameMap<u64>>, name: &str) -> Option<u64> {
        parsed
            .and_then(|p| p.get(name))
            .or_else(|| {
                (!name.is_empty())
                    .then(|| self.routable_statements.get(name))
                    .flatten()
            })
            .copied()
    }

    /// A Parse; `raw` is the whole message, `shape` the fingerprint of a routable read.
    pub(crate) fn on_parse(&mut self, name: &str, raw: Bytes, shape: Option<u64>) {
        if !self.enabled {
            return;
        }
        if !name.is_empty() {
            self.parses.insert(name.to_string(), raw);
            match shape {
                Some(fp) => {
                    self.routable_statements.insert(name.to_string(), fp);
                }
                None => {
                    self.routable_statements.remove(name);
                }
            }
        }
        match (self.reads(), shape) {
            (Some((parsed, ..)), Some(fp)) => {
                parsed.insert(name.to_string(), fp);
            }
            _ => self.batch = Batch::No,
        }
    }

    pub(crate) fn on_bind(&mut self, portal: &str, statement: &str) {
        if !self.enabled {
            return;
        }
        let shape = match &self.batch {
            Batch::Reads { parsed, .. } => self.statement_shape(Some(parsed), statement),
            Batch::Empty => self.statement_shape(None, statement),
            Batch::No => None,
        };
        match (self.reads(), shape) {
            (Some((_, portals, _, shapes)), Some(fp)) => {
                portals.insert(portal.to_string());
                shapes.push(fp);
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
                    self.statement_shape(Some(parsed), name).is_some()
                } else {
                    portals.contains(name)
                }
            }
            Batch::Empty => kind == b'S' && self.statement_shape(None, name).is_some(),
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
            Some((_, portals, executes, _)) if portals.contains(portal) => *executes += 1,
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

    /// At the batch's Sync (or a Query, which ends it too): the shapes it runs if it held
    /// only routable reads, at least one executed. The scan starts over.
    pub(crate) fn end_batch(&mut self) -> Option<Vec<u64>> {
        match std::mem::take(&mut self.batch) {
            Batch::Reads {
                executes, shapes, ..
            } if executes > 0 => Some(shapes),
            _ => None,
        }
    }

    /// Whether a shape may read from new: not once shadow comparisons confirmed that old
    /// and new answer it differently (the canary protects itself; the shape stays on old).
    pub(crate) fn shape_ok(shared: &Shared, fingerprint: u64) -> bool {
        if shared.cutover.is_sent_back(fingerprint) {
            return false;
        }
        let Some(shadow) = shared.shadow.as_ref() else {
            return true;
        };
        let mismatched =
            shadow.stats.confirmed_count(fingerprint) > shared.cutover.forgiven(fingerprint);
        let query = || shadow.stats.query_of(fingerprint).unwrap_or_default();
        if mismatched && shared.cutover.send_back(fingerprint, &query()) {
            let query = query();
            tracing::warn!(
                fingerprint = format!("{fingerprint:016x}"),
                query,
                "Old and new answered a query shape differently; it reads from old from now on."
            );
            metrics::counter!(crate::metrics::READS_SENT_BACK_TOTAL).increment(1);
        }
        !mismatched
    }

    /// Follows a statement the session runs on old (settings, temporary objects).
    pub(crate) fn observe(&mut self, sql: &str, classes: &[Classified]) {
        if !self.enabled {
            return;
        }
        self.settings.observe(sql);
        self.carry.observe(sql, classes);
        if !self.pinned
            && classes
                .iter()
                .any(|c| matches!(c.class, StatementClass::Ddl | StatementClass::Other))
            && contains_ignore_case(sql, "temp")
        {
            self.pin();
        }
        self.pin_on_session_lock(sql, classes);
    }

    /// A session-level advisory lock is held by the server process: a session that took
    /// one cannot move to the other database without letting it go (pinned, the write flip
    /// waits for it). Transaction-level ones end with the transaction.
    /// Only text that calls a function, runs code (DO, CALL), prepares a statement or did
    /// not parse can take one, so only such text is searched.
    pub(crate) fn pin_on_session_lock(&mut self, sql: &str, classes: &[Classified]) {
        if self.enabled && !self.pinned && may_take_session_lock(sql, classes) {
            self.pin();
        }
    }

    fn pin(&mut self) {
        self.pinned = true;
        self.live.gate.pin();
    }

    /// Whether this session's reads go to new now.
    pub(crate) fn reads_new(&self, shared: &Shared) -> bool {
        self.enabled
            && !self.pinned
            && !self.primary_new
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

/// The fingerprint of a statement that may be answered by new: one read-only statement
/// that calls nothing tied to the session on old.
pub(crate) fn routable_shape(sql: &str, classes: &[Classified]) -> Option<u64> {
    routable(sql, classes).then(|| classes[0].fingerprint)
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

fn may_take_session_lock(sql: &str, classes: &[Classified]) -> bool {
    classes.iter().any(|c| {
        c.calls_functions
            || !c.parsed
            || matches!(c.class, StatementClass::Other | StatementClass::Session)
    }) && contains_ignore_case(sql, "advisory_lock")
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

    #[test]
    fn a_session_lock_is_searched_for_where_one_can_be_taken() {
        let pins = |sql: &str| may_take_session_lock(sql, &crate::classify::classify_uncached(sql));
        assert!(pins("SELECT pg_advisory_lock(42)"));
        assert!(pins("select PG_TRY_ADVISORY_LOCK_SHARED(1), 2"));
        assert!(pins("DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$"));
        assert!(pins("CALL p(); SELECT pg_advisory_lock(1)"));
        assert!(pins("SELEC pg_advisory_lock(1)"));
        assert!(pins("PREPARE l AS SELECT pg_advisory_lock($1)"));
        assert!(!pins("SELECT * FROM advisory_locks WHERE id = 1"));
        assert!(!pins("SELECT aid FROM pgbench_accounts WHERE aid = 1"));
    }
}
