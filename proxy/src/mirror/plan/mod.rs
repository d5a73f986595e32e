//! What mirroring does with one statement, decided once from PostgreSQL's parse tree (and
//! cached by text). Statements reach the primary as the client wrote them: row changes are
//! captured by the primary's triggers, so nothing is rewritten. The plan says whether the
//! statement's transaction must be claimed for lockstep capture (and, in autocommit, wrapped
//! in a transaction the proxy can hold open until the secondary prepared), whether it is
//! DDL to mirror as text, or transaction control.

use crate::classify::utility;
use pg_query::protobuf::TransactionStmtKind;
use pg_query::NodeEnum;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Begin,
    /// COMMIT, END, COMMIT AND CHAIN (`chain`: a new transaction opens at once).
    Commit {
        chain: bool,
    },
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// PREPARE TRANSACTION by the client.
    Prepare,
    /// COMMIT PREPARED / ROLLBACK PREPARED by the client.
    FinishPrepared,
}

/// What mirroring does with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Forwarded untouched: reads, session statements, utility commands.
    Pass,
    /// May change rows: its transaction is claimed for lockstep capture first.
    Write,
    /// COPY ... FROM: a write whose data follows the statement (nothing may be sent behind
    /// it before the data).
    CopyFrom,
    /// DDL, mirrored as text at its place among the transaction's changes. `secondary` is
    /// the text for the secondary: the statement itself, or for CREATE TABLE AS the table
    /// without its rows (they arrive captured). `refill` names a table the statement
    /// rewrites with values the secondary would compute otherwise (ADD COLUMN with a
    /// volatile default, a serial or identity column, ALTER TYPE ... USING a function):
    /// its rows are captured after it.
    Ddl {
        secondary: Arc<str>,
        refill: Option<Arc<str>>,
    },
    Txn(TxnOp),
    /// Forwarded untouched, counted as not mirrored (the reason says why).
    Flagged {
        reason: &'static str,
    },
    /// Refused with SQLSTATE 0A000 (`ddl = "reject"`, or `strict` for what cannot be
    /// captured).
    Rejected {
        reason: &'static str,
    },
    /// A procedure or DO block that may COMMIT by itself: never wrapped (it would fail in a
    /// transaction block); outside a transaction its changes go through the change log.
    SelfCommitting,
    /// RESET ALL or a `switchyard.*` setting: forwarded; a claim on the transaction may be
    /// gone, so the next write claims it again.
    ResetsClaim,
    /// A simple-protocol string of several statements of which some need the proxy: run
    /// one by one with PostgreSQL's rules for such strings.
    Multi(Vec<Piece>),
}

/// One statement of a multi-statement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub sql: String,
    pub plan: Plan,
}

impl Plan {
    /// The statement needs the proxy whatever the session's state (claims and commits are
    /// decided by the session).
    pub fn always_mediated(&self) -> bool {
        matches!(
            self,
            Plan::Ddl { .. } | Plan::Rejected { .. } | Plan::Multi(_)
        )
    }
}

/// Facts about routines the primary knows and the parser does not.
pub trait Routines {
    /// A function by this name outside the system schemas is volatile (it may write).
    fn may_write(&self, name: &str) -> bool;
    /// A procedure by this name is known not to COMMIT or ROLLBACK by itself.
    fn plain_procedure(&self, name: &str) -> bool;
}

/// Built-in functions that write where triggers cannot see: large objects.
const LARGE_OBJECT_WRITERS: &[&str] = &[
    "lo_import",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];

/// Decides the plan for a complete Query or Parse string.
pub fn plan(sql: &str, routines: &dyn Routines) -> Plan {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        // The server will reject it and report the error.
        return Plan::Pass;
    };
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() <= 1 {
        let Some(node) = stmts
            .first()
            .and_then(|s| s.stmt.as_ref())
            .and_then(|n| n.node.as_ref())
        else {
            return Plan::Pass;
        };
        return plan_one(sql, node, &parsed, routines);
    }
    let pieces: Vec<Piece> = stmts
        .iter()
        .filter_map(|s| {
            let start = usize::try_from(s.stmt_location).ok()?.min(sql.len());
            let end = if s.stmt_len > 0 {
                (start + s.stmt_len as usize).min(sql.len())
            } else {
                sql.len()
            };
            let text = sql.get(start..end)?.trim();
            let text = text.strip_suffix(';').unwrap_or(text).trim();
            (!text.is_empty()).then(|| Piece {
                sql: text.to_string(),
                plan: plan(text, routines),
            })
        })
        .collect();
    if pieces
        .iter()
        .all(|p| matches!(p.plan, Plan::Pass | Plan::Flagged { .. }))
    {
        return pieces
            .into_iter()
            .find(|p| matches!(p.plan, Plan::Flagged { .. }))
            .map(|p| p.plan)
            .unwrap_or(Plan::Pass);
    }
    Plan::Multi(pieces)
}

fn plan_one(
    sql: &str,
    node: &NodeEnum,
    parsed: &pg_query::ParseResult,
    routines: &dyn Routines,
) -> Plan {
    let calls_large_objects = || {
        parsed.functions().iter().any(|f| {
            let name = f.rsplit('.').next().unwrap_or(f);
            LARGE_OBJECT_WRITERS
                .iter()
                .any(|w| name.eq_ignore_ascii_case(w))
        })
    };
    let calls_writers = || parsed.functions().iter().any(|f| routines.may_write(f));
    match node {
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_) => Plan::Write,
        // SELECT ... INTO TEMP: a temporary table, nothing to migrate.
        NodeEnum::SelectStmt(s) if into_temporary(s.into_clause.as_deref()) => Plan::Pass,
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => Plan::Ddl {
            secondary: without_data(parsed).unwrap_or_else(|| Arc::from(sql)),
            refill: None,
        },
        NodeEnum::SelectStmt(_) | NodeEnum::ExplainStmt(_) => {
            if calls_large_objects() {
                Plan::Flagged {
                    reason: "large object",
                }
            } else if !parsed.dml_tables().is_empty() || calls_writers() {
                // A writable CTE, EXPLAIN ANALYZE of a write, or a function that may write.
                Plan::Write
            } else {
                // FOR UPDATE only locks; nextval() is not row data (sequences are moved at
                // cutover).
                Plan::Pass
            }
        }
        NodeEnum::CopyStmt(c) if c.is_from => Plan::CopyFrom,
        NodeEnum::CreateTableAsStmt(c) if into_temporary(c.into.as_deref()) => Plan::Pass,
        NodeEnum::CreateTableAsStmt(_) => Plan::Ddl {
            secondary: without_data(parsed).unwrap_or_else(|| Arc::from(sql)),
            refill: None,
        },
        NodeEnum::AlterTableStmt(a) => Plan::Ddl {
            secondary: Arc::from(sql),
            refill: refilled(a),
        },
        // Temporary tables live and die with the session: nothing to migrate.
        NodeEnum::CreateStmt(c) if c.relation.as_ref().is_some_and(|r| r.relpersistence == "t") => {
            Plan::Pass
        }
        // Cannot run inside the transaction block mirroring would wrap it in.
        NodeEnum::IndexStmt(i) if i.concurrent => Plan::Flagged {
            reason: "CREATE INDEX CONCURRENTLY",
        },
        // Captured by the TRUNCATE triggers, in order with the rows.
        NodeEnum::TruncateStmt(_) => Plan::Write,
        NodeEnum::TransactionStmt(t) => Plan::Txn(match TransactionStmtKind::try_from(t.kind) {
            Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
                TxnOp::Begin
            }
            Ok(TransactionStmtKind::TransStmtCommit) => TxnOp::Commit { chain: t.chain },
            Ok(TransactionStmtKind::TransStmtRollback) => TxnOp::Rollback,
            Ok(TransactionStmtKind::TransStmtSavepoint) => {
                TxnOp::Savepoint(t.savepoint_name.clone())
            }
            Ok(TransactionStmtKind::TransStmtRelease) => TxnOp::Release(t.savepoint_name.clone()),
            Ok(TransactionStmtKind::TransStmtRollbackTo) => {
                TxnOp::RollbackTo(t.savepoint_name.clone())
            }
            Ok(TransactionStmtKind::TransStmtPrepare) => TxnOp::Prepare,
            _ => TxnOp::FinishPrepared,
        }),
        NodeEnum::VariableSetStmt(v)
            if v.kind == pg_query::protobuf::VariableSetKind::VarResetAll as i32
                || v.name.starts_with("switchyard.") =>
        {
            Plan::ResetsClaim
        }
        NodeEnum::DoStmt(d) => {
            let body = d
                .args
                .iter()
                .filter_map(|a| match a.node.as_ref() {
                    Some(NodeEnum::DefElem(e)) if e.defname == "as" => e.arg.as_ref(),
                    _ => None,
                })
                .filter_map(|n| match n.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect::<String>();
            if controls_transactions(&body) {
                Plan::SelfCommitting
            } else {
                Plan::Write
            }
        }
        NodeEnum::CallStmt(c) => {
            let name = c
                .funccall
                .as_ref()
                .map(|f| {
                    f.funcname
                        .iter()
                        .filter_map(|n| match n.node.as_ref() {
                            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .unwrap_or_default();
            if routines.plain_procedure(&name) {
                Plan::Write
            } else {
                Plan::SelfCommitting
            }
        }
        // SQL-level EXECUTE runs a statement prepared earlier, unseen here: it may write.
        NodeEnum::ExecuteStmt(_) => Plan::Write,
        n if utility(n).is_some() => Plan::Pass,
        NodeEnum::VariableShowStmt(_)
        | NodeEnum::CopyStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_) => Plan::Pass,
        _ => Plan::Ddl {
            secondary: Arc::from(sql),
            refill: None,
        },
    }
}

/// The target of SELECT ... INTO or CREATE TABLE ... AS is a temporary table.
fn into_temporary(into: Option<&pg_query::protobuf::IntoClause>) -> bool {
    into.and_then(|i| i.rel.as_ref())
        .is_some_and(|r| r.relpersistence == "t")
}

mod text;
pub use text::controls_transactions;
use text::{refilled, without_data};

#[cfg(test)]
mod tests;
