//! What the shadow executor may run and how its result is compared, from PostgreSQL's own
//! parser. Runs in the shadow worker, never on the client's path; the session only checks
//! the classifier's cached verdict (a single read statement).
//!
//! Safety is layered: the classifier already calls writable CTEs, `FOR UPDATE`, `nextval()`
//! writes and `set_config()`/advisory locks session statements, so none of those is
//! sampled. This file additionally refuses anything that is not a plain SELECT, functions
//! with effects a read-only transaction does not stop, and functions whose result differs
//! on every call. Whatever still slips through (a user function that writes) fails inside
//! `BEGIN READ ONLY` on both sides and is counted as skipped.

use pg_query::protobuf::{a_const, SelectStmt};
use pg_query::NodeEnum;

/// Functions with effects outside the transaction, or that a read-only transaction allows
/// but a shadow must never run twice.
const UNSAFE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "set_config",
    "pg_notify",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "txid_current",
    "pg_current_xact_id",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_send_query",
];

/// Functions whose result differs between two calls, so a comparison means nothing.
const NONDETERMINISTIC_FUNCTIONS: &[&str] = &[
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "pg_backend_pid",
    "inet_server_port",
    "inet_server_addr",
    "currval",
    "lastval",
    "version",
    "pg_postmaster_start_time",
    "txid_current_snapshot",
    "pg_current_snapshot",
];

/// Why a read is not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Unparsed,
    NotSelect,
    MultipleStatements,
    Locking,
    SelectInto,
    UnsafeFunction,
    Nondeterministic,
}

impl Skip {
    /// Stable label for metrics and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Unparsed => "unparsed",
            Skip::NotSelect => "not_select",
            Skip::MultipleStatements => "multiple_statements",
            Skip::Locking => "locking_clause",
            Skip::SelectInto => "select_into",
            Skip::UnsafeFunction => "unsafe_function",
            Skip::Nondeterministic => "nondeterministic",
        }
    }
}

/// One term of a top-level ORDER BY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    /// `ORDER BY name`: an output column of that name (or a table column; resolved against
    /// the RowDescription later).
    Name(String),
    /// `ORDER BY 2`: the output column at that 1-based position.
    Position(usize),
    /// An expression: the order cannot be checked from the output columns.
    Expression,
}

/// How results of a statement are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The top-level ORDER BY; empty when there is none.
    pub order: Vec<SortKey>,
    /// LIMIT, OFFSET or FETCH at the top level: which rows come back depends on the order.
    pub limited: bool,
}

/// The verdict for one statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub verdict: Result<Shape, Skip>,
    /// The statement with its constants replaced by `$n`: safe to show and log.
    pub normalized: String,
}

pub fn analyze(sql: &str) -> Analysis {
    let normalized = pg_query::normalize(sql).unwrap_or_else(|_| "<unparsed>".to_string());
    Analysis {
        verdict: verdict(sql),
        normalized,
    }
}

fn verdict(sql: &str) -> Result<Shape, Skip> {
    let parsed = pg_query::parse(sql, 0).map_err(|_| Skip::Unparsed)?;
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(Skip::MultipleStatements);
    }
    let Some(NodeEnum::SelectStmt(select)) = stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref())
    else {
        return Err(Skip::NotSelect);
    };
    if !parsed.dml_tables().is_empty() {
        return Err(Skip::NotSelect);
    }
    if select.into_clause.is_some() {
        return Err(Skip::SelectInto);
    }
    let calls = parsed.call_functions();
    let named = |list: &[&str]| {
        calls.iter().any(|f| {
            let name = f.rsplit('.').next().unwrap_or(f);
            list.iter().any(|w| name.eq_ignore_ascii_case(w))
                || name.to_ascii_lowercase().contains("advisory")
        })
    };
    if named(UNSAFE_FUNCTIONS) {
        return Err(Skip::UnsafeFunction);
    }
    if named(NONDETERMINISTIC_FUNCTIONS) {
        return Err(Skip::Nondeterministic);
    }
    if has_locking(select) {
        return Err(Skip::Locking);
    }
    Ok(shape(select))
}

/// A locking clause anywhere in the set-operation tree (the classifier looks at the top).
fn has_locking(s: &SelectStmt) -> bool {
    !s.locking_clause.is_empty()
        || s.larg.as_deref().is_some_and(has_locking)
        || s.rarg.as_deref().is_some_and(has_locking)
}

fn shape(s: &SelectStmt) -> Shape {
    let order = s
        .sort_clause
        .iter()
        .map(|n| match n.node.as_ref() {
            Some(NodeEnum::SortBy(sb)) => {
                sort_key(sb.node.as_deref().and_then(|n| n.node.as_ref()))
            }
            _ => SortKey::Expression,
        })
        .collect();
    Shape {
        order,
        limited: s.limit_count.is_some() || s.limit_offset.is_some(),
    }
}

fn sort_key(node: Option<&NodeEnum>) -> SortKey {
    match node {
        Some(NodeEnum::ColumnRef(c)) => match c.fields.last().and_then(|f| f.node.as_ref()) {
            Some(NodeEnum::String(s)) => SortKey::Name(s.sval.clone()),
            _ => SortKey::Expression,
        },
        Some(NodeEnum::AConst(c)) => match &c.val {
            Some(a_const::Val::Ival(i)) if i.ival > 0 => SortKey::Position(i.ival as usize),
            _ => SortKey::Expression,
        },
        _ => SortKey::Expression,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(sql: &str) -> Option<Skip> {
        analyze(sql).verdict.err()
    }

    #[test]
    fn only_plain_selects_run() {
        assert_eq!(skip("SELECT * FROM t"), None);
        assert_eq!(skip("SELECT * FROM t FOR UPDATE"), Some(Skip::Locking));
        assert_eq!(
            skip("SELECT * FROM t UNION SELECT * FROM u FOR SHARE"),
            Some(Skip::Locking)
        );
        assert_eq!(skip("SELECT nextval('s')"), Some(Skip::UnsafeFunction));
        assert_eq!(
            skip("SELECT x FROM t WHERE pg_try_advisory_lock(1)"),
            Some(Skip::UnsafeFunction)
        );
        assert_eq!(
            skip("SELECT set_config('a.b', '1', false)"),
            Some(Skip::UnsafeFunction)
        );
        assert_eq!(skip("SELECT random()"), Some(Skip::Nondeterministic));
        assert_eq!(skip("SELECT * INTO t2 FROM t"), Some(Skip::SelectInto));
        assert_eq!(
            skip("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"),
            Some(Skip::NotSelect)
        );
        assert_eq!(skip("SHOW search_path"), Some(Skip::NotSelect));
        assert_eq!(skip("EXPLAIN ANALYZE SELECT 1"), Some(Skip::NotSelect));
        assert_eq!(skip("SELECT 1; SELECT 2"), Some(Skip::MultipleStatements));
        assert_eq!(skip("SELEC 1"), Some(Skip::Unparsed));
    }

    #[test]
    fn order_and_limit() {
        let s = analyze("SELECT a, b FROM t ORDER BY t.a, 2 DESC, lower(b) LIMIT 3")
            .verdict
            .expect("select");
        assert_eq!(
            s.order,
            vec![
                SortKey::Name("a".into()),
                SortKey::Position(2),
                SortKey::Expression
            ]
        );
        assert!(s.limited);
        let s = analyze("SELECT a FROM t").verdict.expect("select");
        assert!(s.order.is_empty() && !s.limited);
        // ORDER BY inside a subquery does not order the result.
        let s = analyze("SELECT * FROM (SELECT a FROM t ORDER BY a) x")
            .verdict
            .expect("select");
        assert!(s.order.is_empty());
    }

    #[test]
    fn normalized_text_has_no_constants() {
        let a = analyze("SELECT * FROM t WHERE name = 'secret' AND id = 42");
        assert!(!a.normalized.contains("secret"), "{}", a.normalized);
        assert!(!a.normalized.contains("42"), "{}", a.normalized);
    }
}
