//! What mirroring does with one statement, decided from PostgreSQL's parse tree, and the
//! rewrite that makes a write statement return its row images.
//!
//! A captured write gets three columns put *in front of* whatever RETURNING list the client
//! wrote: the table's oid, the transaction id and the row as JSON. Putting them first means the client's own
//! columns are always "everything after the first three", even for `RETURNING *`, so the proxy
//! can strip them from RowDescription and DataRow without knowing the table. The statement
//! text is spliced, not deparsed, so the client's SQL reaches the server as written.

use pg_query::protobuf::{RangeVar, TransactionStmtKind};
use pg_query::NodeEnum;

/// Columns the rewrite adds in front of the client's RETURNING list.
pub const EXTRA_COLUMNS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmlKind {
    Insert,
    Update,
    Delete,
}

/// A write statement rewritten to capture row images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub kind: DmlKind,
    /// The statement as sent to the primary.
    pub sql: String,
    /// Columns an UPDATE assigns; an update of a primary-key column cannot be mirrored by
    /// row image (RETURNING shows only the new key), so the table gets a re-sync order.
    pub updated_columns: Vec<String>,
    /// The client wrote a RETURNING list of its own (else it gets no rows at all).
    pub client_returning: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED issued by the client.
    TwoPhase,
}

/// What mirroring does with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not mirrored: reads, session statements, utility commands.
    Pass,
    Capture(Capture),
    /// Mirrored as text after the primary ran it (DDL, TRUNCATE, MERGE, writable CTEs...).
    Statement {
        ddl: bool,
        reason: &'static str,
    },
    Txn(TxnOp),
    /// Writes that cannot be mirrored at all (COPY FROM for now, multi-statement strings
    /// mixing transaction control and writes); counted and flagged.
    Unmirrored {
        reason: &'static str,
    },
    /// Refused by configuration (`ddl = "reject"`).
    Rejected,
    /// Not mirrored, and forwarded without the proxy stepping in (COPY FROM streams).
    PassUnmirrored {
        reason: &'static str,
    },
    /// COPY ... FROM STDIN: the data stream goes to the primary and, once it committed
    /// the COPY there, the same stream to the secondary. `relation` is a regclass literal.
    CopyIn {
        relation: String,
    },
    /// A simple-protocol string of several statements that write or control transactions:
    /// the proxy runs them one by one, each with its own plan.
    Multi(Vec<String>),
}

impl Plan {
    /// Whether the proxy must handle the request itself rather than forward it.
    pub fn needs_mediation(&self) -> bool {
        !matches!(self, Plan::Pass | Plan::PassUnmirrored { .. })
    }
}

/// Decides the plan for a complete Query or Parse string.
pub fn plan(sql: &str) -> Plan {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        // The server will reject it and report the error.
        return Plan::Pass;
    };
    let stmts = &parsed.protobuf.stmts;
    let nodes: Vec<&NodeEnum> = stmts
        .iter()
        .filter_map(|s| s.stmt.as_ref().and_then(|n| n.node.as_ref()))
        .collect();
    match nodes.as_slice() {
        [] => Plan::Pass,
        [node] => {
            let (start, end) = statement_span(sql, stmts[0].stmt_location, stmts[0].stmt_len);
            plan_one(sql, start, end, node, &parsed)
        }
        many => {
            let plans: Vec<Plan> = many
                .iter()
                .map(|n| plan_one(sql, 0, sql.len(), n, &parsed))
                .collect();
            if plans
                .iter()
                .all(|p| matches!(p, Plan::Pass | Plan::PassUnmirrored { .. }))
            {
                // Nothing to mediate: passed whole, flagged if a part is not mirrored.
                return plans
                    .into_iter()
                    .find(|p| matches!(p, Plan::PassUnmirrored { .. }))
                    .unwrap_or(Plan::Pass);
            }
            let pieces = stmts
                .iter()
                .map(|s| {
                    let (start, end) = statement_span(sql, s.stmt_location, s.stmt_len);
                    sql[start..end].trim().to_string()
                })
                .collect();
            Plan::Multi(pieces)
        }
    }
}

fn statement_span(sql: &str, location: i32, len: i32) -> (usize, usize) {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = if len > 0 {
        (start + len as usize).min(sql.len())
    } else {
        sql.len()
    };
    (start, end)
}

fn plan_one(
    sql: &str,
    start: usize,
    end: usize,
    node: &NodeEnum,
    parsed: &pg_query::ParseResult,
) -> Plan {
    match node {
        NodeEnum::InsertStmt(s) => capture(
            sql,
            (start, end),
            Dml {
                kind: DmlKind::Insert,
                relation: s.relation.as_ref(),
                returning: s.returning_clause.as_ref(),
                with: s.with_clause.as_ref(),
                updated_columns: Vec::new(),
            },
        ),
        NodeEnum::UpdateStmt(s) => capture(
            sql,
            (start, end),
            Dml {
                kind: DmlKind::Update,
                relation: s.relation.as_ref(),
                returning: s.returning_clause.as_ref(),
                with: s.with_clause.as_ref(),
                updated_columns: s
                    .target_list
                    .iter()
                    .filter_map(|t| match t.node.as_ref() {
                        Some(NodeEnum::ResTarget(r)) => Some(r.name.clone()),
                        _ => None,
                    })
                    .collect(),
            },
        ),
        NodeEnum::DeleteStmt(s) => capture(
            sql,
            (start, end),
            Dml {
                kind: DmlKind::Delete,
                relation: s.relation.as_ref(),
                returning: s.returning_clause.as_ref(),
                with: s.with_clause.as_ref(),
                updated_columns: Vec::new(),
            },
        ),
        NodeEnum::MergeStmt(_) => Plan::Statement {
            ddl: false,
            reason: "MERGE",
        },
        NodeEnum::SelectStmt(s) => {
            if s.into_clause.is_some() {
                Plan::Statement {
                    ddl: true,
                    reason: "SELECT INTO",
                }
            } else if !parsed.dml_tables().is_empty() {
                Plan::Statement {
                    ddl: false,
                    reason: "writable CTE",
                }
            } else {
                // nextval(), FOR UPDATE and functions that write are not mirrored: the
                // secondary keeps its own sequences (advanced at cutover), and row changes
                // made inside functions are out of the proxy's sight (verify shows them).
                Plan::Pass
            }
        }
        NodeEnum::CopyStmt(c) if c.is_from => match &c.relation {
            Some(r) if c.filename.is_empty() && !c.is_program => {
                let name = if r.schemaname.is_empty() {
                    quote_ident(&r.relname)
                } else {
                    format!("{}.{}", quote_ident(&r.schemaname), quote_ident(&r.relname))
                };
                Plan::CopyIn {
                    relation: format!("'{}'::regclass", name.replace('\'', "''")),
                }
            }
            _ => Plan::Unmirrored {
                reason: "COPY FROM a server-side file or program",
            },
        },
        // Temporary tables live and die with the session: nothing to migrate (and a
        // transaction that touched one cannot be prepared).
        NodeEnum::CreateStmt(c) if c.relation.as_ref().is_some_and(|r| r.relpersistence == "t") => {
            Plan::Pass
        }
        NodeEnum::CreateTableAsStmt(c)
            if c.into
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            Plan::Pass
        }
        // Cannot run inside the transaction block mirroring would wrap it in.
        NodeEnum::IndexStmt(i) if i.concurrent => Plan::Unmirrored {
            reason: "CREATE INDEX CONCURRENTLY",
        },
        NodeEnum::TransactionStmt(t) => {
            let op = match TransactionStmtKind::try_from(t.kind) {
                Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
                    TxnOp::Begin
                }
                Ok(TransactionStmtKind::TransStmtCommit) => TxnOp::Commit,
                Ok(TransactionStmtKind::TransStmtRollback) => TxnOp::Rollback,
                Ok(TransactionStmtKind::TransStmtSavepoint) => {
                    TxnOp::Savepoint(t.savepoint_name.clone())
                }
                Ok(TransactionStmtKind::TransStmtRelease) => {
                    TxnOp::Release(t.savepoint_name.clone())
                }
                Ok(TransactionStmtKind::TransStmtRollbackTo) => {
                    TxnOp::RollbackTo(t.savepoint_name.clone())
                }
                _ => TxnOp::TwoPhase,
            };
            Plan::Txn(op)
        }
        NodeEnum::VariableSetStmt(_)
        | NodeEnum::VariableShowStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::NotifyStmt(_)
        | NodeEnum::PrepareStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::DeclareCursorStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::LockStmt(_)
        | NodeEnum::ConstraintsSetStmt(_)
        | NodeEnum::ExplainStmt(_)
        | NodeEnum::CopyStmt(_)
        | NodeEnum::VacuumStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::LoadStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_) => Plan::Pass,
        // Code that may write where the statement does not show it: run on old as sent,
        // counted and listed as not mirrored (verify shows what it wrote).
        NodeEnum::DoStmt(_) => Plan::PassUnmirrored { reason: "DO block" },
        NodeEnum::CallStmt(_) => Plan::PassUnmirrored { reason: "CALL" },
        NodeEnum::ExecuteStmt(_) => Plan::PassUnmirrored {
            reason: "EXECUTE of an SQL-level prepared statement",
        },
        _ => Plan::Statement {
            ddl: true,
            reason: "DDL",
        },
    }
}

/// The parts of an INSERT, UPDATE or DELETE the rewrite needs.
struct Dml<'a> {
    kind: DmlKind,
    relation: Option<&'a RangeVar>,
    returning: Option<&'a pg_query::protobuf::ReturningClause>,
    with: Option<&'a pg_query::protobuf::WithClause>,
    updated_columns: Vec<String>,
}

/// A WITH clause holding a data-modifying statement: its rows never reach RETURNING.
fn writable_cte(with: Option<&pg_query::protobuf::WithClause>) -> bool {
    with.is_some_and(|w| {
        w.ctes.iter().any(|c| match c.node.as_ref() {
            Some(NodeEnum::CommonTableExpr(cte)) => matches!(
                cte.ctequery.as_ref().and_then(|q| q.node.as_ref()),
                Some(
                    NodeEnum::InsertStmt(_)
                        | NodeEnum::UpdateStmt(_)
                        | NodeEnum::DeleteStmt(_)
                        | NodeEnum::MergeStmt(_)
                )
            ),
            _ => false,
        })
    })
}

fn capture(sql: &str, (start, end): (usize, usize), dml: Dml<'_>) -> Plan {
    if writable_cte(dml.with) {
        return Plan::Statement {
            ddl: false,
            reason: "writable CTE",
        };
    }
    let Dml {
        kind,
        relation,
        returning,
        updated_columns,
        ..
    } = dml;
    let Some(rel) = relation else {
        return Plan::Pass;
    };
    let name = rel
        .alias
        .as_ref()
        .map(|a| a.aliasname.as_str())
        .unwrap_or(rel.relname.as_str());
    let q = quote_ident(name);
    let extra = format!("{q}.tableoid, pg_current_xact_id()::text, row_to_json({q})::text");
    let first_target = returning.and_then(|r| {
        r.exprs.first().and_then(|n| match n.node.as_ref() {
            Some(NodeEnum::ResTarget(t)) => usize::try_from(t.location).ok(),
            _ => None,
        })
    });
    let body = &sql[..end];
    let rewritten = match first_target {
        Some(at) if at >= start && at <= end && sql.is_char_boundary(at) => {
            format!("{}{extra}, {}{}", &sql[..at], &sql[at..end], &sql[end..])
        }
        Some(_) => {
            return Plan::Statement {
                ddl: false,
                reason: "RETURNING list the proxy could not extend",
            }
        }
        None => {
            // A newline first, so a trailing `-- comment` cannot swallow the addition.
            let trimmed = body.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
            format!("{trimmed}\nRETURNING {extra}{}", &sql[end..])
        }
    };
    Plan::Capture(Capture {
        kind,
        sql: rewritten,
        updated_columns,
        client_returning: first_target.is_some(),
    })
}

/// The tables a statement writes, each as a quoted (possibly schema-qualified) name for
/// `to_regclass`, resolved later with the session's own search_path. For statements the
/// proxy cannot mirror as text (their parameters are bound on the primary only): their
/// tables are re-synced whole instead.
pub fn written_tables(sql: &str) -> Vec<String> {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Vec::new();
    };
    let mut out: Vec<String> = parsed
        .dml_tables()
        .iter()
        .map(|t| match t.split_once('.') {
            Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
            None => quote_ident(t),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub use switchyard_core::ident::quote_ident;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tables_are_the_targets_only() {
        assert_eq!(
            written_tables(
                "MERGE INTO app.\"Accounts\" a USING src s ON a.id = s.id \
                 WHEN MATCHED THEN UPDATE SET v = $1"
            ),
            vec!["\"app\".\"Accounts\"".to_string()]
        );
        assert_eq!(
            written_tables("WITH d AS (DELETE FROM t WHERE id = $1 RETURNING *) INSERT INTO log SELECT * FROM d"),
            vec!["\"log\"".to_string(), "\"t\"".to_string()]
        );
        assert!(written_tables("SELECT * FROM t WHERE id = $1").is_empty());
        assert!(written_tables("not sql").is_empty());
    }

    fn captured(sql: &str) -> Capture {
        match plan(sql) {
            Plan::Capture(c) => c,
            other => panic!("{sql}: expected a capture, got {other:?}"),
        }
    }

    #[test]
    fn appends_returning() {
        let c = captured("INSERT INTO t (a) VALUES (now());");
        assert_eq!(
            c.sql,
            "INSERT INTO t (a) VALUES (now())\nRETURNING \"t\".tableoid, pg_current_xact_id()::text, row_to_json(\"t\")::text;"
        );
        assert_eq!(c.kind, DmlKind::Insert);
        let c = captured("delete from s.t as x where id = 1 -- bye");
        assert!(c.sql.ends_with("-- bye\nRETURNING \"x\".tableoid, pg_current_xact_id()::text, row_to_json(\"x\")::text"), "{}", c.sql);
    }

    #[test]
    fn extends_client_returning_in_front() {
        let c = captured("UPDATE t SET b = 2 WHERE a = 1 RETURNING *");
        assert_eq!(
            c.sql,
            "UPDATE t SET b = 2 WHERE a = 1 RETURNING \"t\".tableoid, pg_current_xact_id()::text, row_to_json(\"t\")::text, *"
        );
        assert_eq!(c.updated_columns, vec!["b".to_string()]);
        let c = captured("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b RETURNING a, b AS bee");
        assert!(c.sql.ends_with("RETURNING \"t\".tableoid, pg_current_xact_id()::text, row_to_json(\"t\")::text, a, b AS bee"), "{}", c.sql);
    }

    #[test]
    fn other_plans() {
        assert_eq!(plan("SELECT 1"), Plan::Pass);
        assert_eq!(plan("SELECT nextval('s')"), Plan::Pass);
        assert!(matches!(
            plan("CREATE TABLE x (id int)"),
            Plan::Statement { ddl: true, .. }
        ));
        assert!(matches!(
            plan("TRUNCATE x"),
            Plan::Statement { ddl: true, .. }
        ));
        assert!(matches!(
            plan("WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d"),
            Plan::Statement { ddl: false, .. }
        ));
        assert!(matches!(
            plan("WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d"),
            Plan::Statement { ddl: false, .. }
        ));
        assert_eq!(plan("BEGIN"), Plan::Txn(TxnOp::Begin));
        assert_eq!(plan("end"), Plan::Txn(TxnOp::Commit));
        assert_eq!(plan("SAVEPOINT a"), Plan::Txn(TxnOp::Savepoint("a".into())));
        assert_eq!(
            plan("ROLLBACK TO SAVEPOINT a"),
            Plan::Txn(TxnOp::RollbackTo("a".into()))
        );
        assert_eq!(plan("SET x.y = 1"), Plan::Pass);
        assert_eq!(plan("CREATE TEMP TABLE s (id int)"), Plan::Pass);
        assert_eq!(plan("CREATE TEMPORARY TABLE s AS SELECT 1"), Plan::Pass);
        assert!(matches!(
            plan("CREATE UNLOGGED TABLE s (id int)"),
            Plan::Statement { ddl: true, .. }
        ));
        assert_eq!(
            plan("COPY s.T FROM STDIN"),
            Plan::CopyIn {
                relation: "'\"s\".\"t\"'::regclass".into()
            }
        );
        assert!(matches!(
            plan("COPY t FROM '/tmp/x'"),
            Plan::Unmirrored { .. }
        ));
        assert_eq!(
            plan("BEGIN; INSERT INTO t VALUES (1);COMMIT"),
            Plan::Multi(vec![
                "BEGIN".into(),
                "INSERT INTO t VALUES (1)".into(),
                "COMMIT".into()
            ])
        );
        assert_eq!(plan("SELECT 1; SELECT 2"), Plan::Pass);
        assert_eq!(plan("SELEC broken"), Plan::Pass);
    }
}
