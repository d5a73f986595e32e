//! Statement classification with PostgreSQL's own parser (pg_query): what kind of statement
//! each one is, and its fingerprint. The proxy counts by class now; routing (dual writes,
//! shadow reads) decides by it later.

mod cache;
mod conforming;
mod normalize;
#[cfg(test)]
mod shape_tests;

pub use cache::Classifier;
pub use conforming::{conforming, depends_on_conforming_strings};
pub use normalize::literal_blind_key;

use pg_query::NodeEnum;

/// What a statement does, as far as routing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementClass {
    /// Reads only: SELECT without locking clause or writing function, SHOW, EXPLAIN, COPY TO.
    Read,
    /// Changes rows: INSERT/UPDATE/DELETE/MERGE, writable CTEs, SELECT ... FOR UPDATE,
    /// SELECT nextval(), COPY FROM.
    Write,
    /// Changes schema or whole tables: CREATE/ALTER/DROP, TRUNCATE, GRANT, SELECT INTO.
    Ddl,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION...
    Transaction,
    /// Session state: SET, RESET, DISCARD, LISTEN/NOTIFY, PREPARE/EXECUTE, cursors, LOCK.
    Session,
    /// Everything else (VACUUM, DO, CALL, CHECKPOINT) and text the parser rejects.
    Other,
}

impl StatementClass {
    /// Position in per-class metric arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Transaction => "transaction",
            StatementClass::Session => "session",
            StatementClass::Other => "other",
        }
    }
}

/// One classified statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub class: StatementClass,
    /// pg_query's fingerprint: equal for statements that differ only in constants.
    pub fingerprint: u64,
    /// False when the parser rejected the text; the server will report the error.
    pub parsed: bool,
    /// Calls a function (which may write, unless it is a built-in one): dual writes look
    /// at the plan of such reads.
    pub calls_functions: bool,
}

/// Functions that change state even inside a SELECT.
const WRITING_FUNCTIONS: &[&str] = &["nextval", "setval", "lo_import", "lo_unlink", "lo_create"];
const SESSION_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_notify",
];

/// Parses `sql` (one or more statements) and classifies each, uncached.
pub fn classify_uncached(sql: &str) -> Vec<Classified> {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(_) => {
            // Of the literal-blind key, as for parsed statements: text that differs only
            // in constants shares one cache entry, so it must share one fingerprint too.
            let shape = literal_blind_key(sql);
            let shape = shape.as_deref().unwrap_or(sql);
            return vec![Classified {
                class: StatementClass::Other,
                fingerprint: xxhash_rust::xxh3::xxh3_64(shape.as_bytes()),
                parsed: false,
                calls_functions: false,
            }];
        }
    };
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() > 1 {
        // Table and function contexts are collected per parse, so classify each statement
        // on its own text to keep one statement's writes from marking its neighbours.
        return stmts
            .iter()
            .filter_map(|s| {
                let start = usize::try_from(s.stmt_location).ok()?;
                let piece = if s.stmt_len == 0 {
                    sql.get(start..)?
                } else {
                    sql.get(start..start + usize::try_from(s.stmt_len).ok()?)?
                };
                classify_uncached(piece).into_iter().next()
            })
            .collect();
    }
    let fingerprint = pg_query::fingerprint(sql, 0, pg_query::FingerprintOptions::FULL_RELNAME)
        .map(|f| f.value)
        .unwrap_or_else(|_| xxhash_rust::xxh3::xxh3_64(sql.as_bytes()));
    let Some(node) = stmts
        .first()
        .and_then(|s| s.stmt.as_ref())
        .and_then(|n| n.node.as_ref())
    else {
        // Empty query (only comments or semicolons).
        return Vec::new();
    };
    let writes_rows = !parsed.dml_tables().is_empty();
    let calls = parsed.call_functions();
    let calls_any = |list: &[&str]| {
        calls.iter().any(|f| {
            let name = f.rsplit('.').next().unwrap_or(f);
            list.iter().any(|w| name.eq_ignore_ascii_case(w))
        })
    };
    let class = match node {
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_) => StatementClass::Write,
        NodeEnum::SelectStmt(s) => {
            if s.into_clause.is_some() {
                StatementClass::Ddl
            } else if writes_rows || !s.locking_clause.is_empty() || calls_any(WRITING_FUNCTIONS) {
                StatementClass::Write
            } else if calls_any(SESSION_FUNCTIONS) {
                StatementClass::Session
            } else {
                StatementClass::Read
            }
        }
        NodeEnum::ExplainStmt(_) => {
            if writes_rows {
                StatementClass::Write
            } else {
                StatementClass::Read
            }
        }
        NodeEnum::CopyStmt(c) => {
            if c.is_from {
                StatementClass::Write
            } else {
                StatementClass::Read
            }
        }
        NodeEnum::VariableShowStmt(_) => StatementClass::Read,
        NodeEnum::TransactionStmt(_) => StatementClass::Transaction,
        NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_) => StatementClass::Other,
        n => match utility(n) {
            Some(Utility::Session) => StatementClass::Session,
            Some(Utility::Maintenance) => StatementClass::Other,
            None => StatementClass::Ddl,
        },
    };
    vec![Classified {
        class,
        fingerprint,
        parsed: true,
        calls_functions: !calls.is_empty(),
    }]
}

/// Statements that change no rows and define nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Utility {
    /// Session state only: SET, DISCARD, LISTEN/NOTIFY, PREPARE/EXECUTE, cursors, LOCK,
    /// SET CONSTRAINTS.
    Session,
    /// VACUUM, CHECKPOINT, LOAD, CLUSTER, REINDEX.
    Maintenance,
}

pub(crate) fn utility(node: &NodeEnum) -> Option<Utility> {
    match node {
        NodeEnum::VariableSetStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::NotifyStmt(_)
        | NodeEnum::PrepareStmt(_)
        | NodeEnum::ExecuteStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::DeclareCursorStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::LockStmt(_)
        | NodeEnum::ConstraintsSetStmt(_) => Some(Utility::Session),
        NodeEnum::VacuumStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::LoadStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_) => Some(Utility::Maintenance),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Vec<StatementClass> {
        classify_uncached(sql)
            .into_iter()
            .map(|c| c.class)
            .collect()
    }

    #[test]
    fn classes() {
        use StatementClass::*;
        for (sql, want) in [
            ("SELECT * FROM t", Read),
            ("SELECT * FROM t FOR UPDATE", Write),
            ("SELECT nextval('s')", Write),
            ("SELECT set_config('a.b', '1', false)", Session),
            (
                "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
                Write,
            ),
            ("INSERT INTO t VALUES (1)", Write),
            ("SELECT * INTO t2 FROM t", Ddl),
            ("CREATE TABLE t (id int)", Ddl),
            ("TRUNCATE t", Ddl),
            ("COPY t FROM STDIN", Write),
            ("COPY t TO STDOUT", Read),
            ("SET search_path = x", Session),
            ("VACUUM ANALYZE t", Other),
            ("REFRESH MATERIALIZED VIEW v", Ddl),
            ("SELEC oops", Other),
        ] {
            assert_eq!(class(sql), vec![want], "{sql}");
        }
        assert_eq!(
            class("BEGIN; UPDATE t SET a = 1; COMMIT"),
            vec![Transaction, Write, Transaction]
        );
        assert!(class("-- nothing").is_empty());
    }

    #[test]
    fn fingerprint_ignores_constants() {
        let a = classify_uncached("SELECT * FROM t WHERE id = 1");
        let b = classify_uncached("SELECT * FROM t WHERE id = 2");
        let c = classify_uncached("SELECT * FROM u WHERE id = 2");
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_ne!(a[0].fingerprint, c[0].fingerprint);
        assert!(!classify_uncached("SELEC oops")[0].parsed);
    }
}
