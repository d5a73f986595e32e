//! What mirroring does with one statement, decided once from PostgreSQL's parse tree (and
//! cached by text). Statements reach the primary as the client wrote them: row changes are
//! captured by the primary's triggers, so nothing is rewritten. The plan says whether the
//! statement's transaction must be claimed for lockstep capture (and, in autocommit, wrapped
//! in a transaction the proxy can hold open until the secondary prepared), whether it is
//! DDL to mirror as text, or transaction control.

use pg_query::protobuf::{ObjectType, TransactionStmtKind};
use pg_query::NodeEnum;
use std::sync::Arc;
use switchyard_core::ident::quote_ident;

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
        NodeEnum::SelectStmt(s)
            if s.into_clause
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            Plan::Pass
        }
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
        NodeEnum::CreateTableAsStmt(c)
            if c.into
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| r.relpersistence == "t") =>
        {
            Plan::Pass
        }
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
        | NodeEnum::CopyStmt(_)
        | NodeEnum::VacuumStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::LoadStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_) => Plan::Pass,
        _ => Plan::Ddl {
            secondary: Arc::from(sql),
            refill: None,
        },
    }
}

/// A DO body or procedure source that may end the transaction it runs in: it says COMMIT,
/// ROLLBACK or CALL outside string literals and comments.
pub fn controls_transactions(source: &str) -> bool {
    let code = code_only(source).to_ascii_lowercase();
    ["commit", "rollback", "call"].iter().any(|word| {
        code.match_indices(word).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let after = code[i + word.len()..].chars().next();
            let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            boundary(before) && boundary(after)
        })
    })
}

/// `source` with string literals, quoted identifiers and comments blanked out.
fn code_only(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &source[i..];
        let skip_to = |end: &str, from: usize| rest[from..].find(end).map(|e| from + e + end.len());
        let skipped = if rest.starts_with("--") {
            Some(rest.find('\n').unwrap_or(rest.len()))
        } else if rest.starts_with("/*") {
            Some(skip_to("*/", 2).unwrap_or(rest.len()))
        } else if rest.starts_with('\'') {
            Some(skip_to("'", 1).unwrap_or(rest.len()))
        } else if rest.starts_with('"') {
            Some(skip_to("\"", 1).unwrap_or(rest.len()))
        } else if let Some(after) = rest.strip_prefix('$') {
            // A dollar quote: $$ or $tag$.
            after
                .find('$')
                .filter(|&e| after[..e].chars().all(|c| c.is_alphanumeric() || c == '_'))
                .map(|e| {
                    let tag = &rest[..e + 2];
                    skip_to(tag, tag.len()).unwrap_or(rest.len())
                })
        } else {
            None
        };
        match skipped {
            Some(n) => {
                out.push(' ');
                i += n.max(1);
            }
            None => {
                let c = rest.chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The table an ALTER TABLE fills with values the secondary would compute differently: a
/// column added with a default that calls anything (now(), gen_random_uuid(), nextval(),
/// CURRENT_TIMESTAMP), a serial or identity column, or a type change USING a call.
fn refilled(a: &pg_query::protobuf::AlterTableStmt) -> Option<Arc<str>> {
    use pg_query::protobuf::{AlterTableType, ConstrType};
    let calls = |n: &pg_query::protobuf::Node| {
        let d = format!("{n:?}");
        d.contains("FuncCall") || d.contains("SqlvalueFunction")
    };
    let volatile = a.cmds.iter().any(|c| {
        let Some(NodeEnum::AlterTableCmd(cmd)) = c.node.as_ref() else {
            return false;
        };
        let Some(NodeEnum::ColumnDef(col)) = cmd.def.as_ref().and_then(|d| d.node.as_ref()) else {
            return false;
        };
        if cmd.subtype == AlterTableType::AtAlterColumnType as i32 {
            return col.raw_default.as_deref().is_some_and(calls);
        }
        if cmd.subtype != AlterTableType::AtAddColumn as i32 {
            return false;
        }
        let serial = col.type_name.as_ref().is_some_and(|t| {
            t.names.iter().any(|n| {
                matches!(n.node.as_ref(), Some(NodeEnum::String(s))
                    if matches!(s.sval.as_str(), "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8"))
            })
        });
        serial
            || col.constraints.iter().any(|k| match k.node.as_ref() {
                Some(NodeEnum::Constraint(k)) => {
                    k.contype == ConstrType::ConstrIdentity as i32
                        || (k.contype == ConstrType::ConstrDefault as i32
                            && k.raw_expr.as_deref().is_some_and(calls))
                }
                _ => false,
            })
    });
    let rel = a.relation.as_ref()?;
    volatile.then(|| {
        let name = if rel.schemaname.is_empty() {
            quote_ident(&rel.relname)
        } else {
            format!(
                "{}.{}",
                quote_ident(&rel.schemaname),
                quote_ident(&rel.relname)
            )
        };
        Arc::from(name.as_str())
    })
}

/// CREATE TABLE AS / SELECT INTO for the secondary: the table without its rows, which the
/// primary's capture sends as row images (a query re-run on the secondary could find other
/// rows, and volatile values would differ).
fn without_data(parsed: &pg_query::ParseResult) -> Option<Arc<str>> {
    let mut tree = parsed.protobuf.clone();
    let node = tree.stmts.first_mut()?.stmt.as_mut()?.node.as_mut()?;
    match node {
        NodeEnum::CreateTableAsStmt(c) => {
            if c.objtype != ObjectType::ObjectTable as i32 {
                // A materialized view computes its rows from the secondary's own tables.
                return None;
            }
            c.into.as_mut()?.skip_data = true;
        }
        NodeEnum::SelectStmt(s) => {
            let mut into = s.into_clause.take()?;
            into.skip_data = true;
            let query = pg_query::protobuf::Node {
                node: Some(NodeEnum::SelectStmt(s.clone())),
            };
            *node = NodeEnum::CreateTableAsStmt(Box::new(pg_query::protobuf::CreateTableAsStmt {
                query: Some(Box::new(query)),
                into: Some(into),
                objtype: ObjectType::ObjectTable as i32,
                is_select_into: false,
                if_not_exists: false,
            }));
        }
        _ => return None,
    }
    pg_query::deparse(&tree, Default::default())
        .ok()
        .map(Arc::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Functions named `my_writer*` may write; procedure `plain` does not commit.
    struct Known;

    impl Routines for Known {
        fn may_write(&self, name: &str) -> bool {
            name.starts_with("my_writer")
        }
        fn plain_procedure(&self, name: &str) -> bool {
            name == "plain"
        }
    }

    fn p(sql: &str) -> Plan {
        plan(sql, &Known)
    }

    #[test]
    fn writes_ddl_and_reads() {
        assert_eq!(p("INSERT INTO t VALUES (now())"), Plan::Write);
        assert_eq!(
            p("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"),
            Plan::Write
        );
        assert_eq!(
            p("WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d"),
            Plan::Write
        );
        assert_eq!(p("COPY t FROM STDIN"), Plan::CopyFrom);
        assert_eq!(p("COPY t TO STDOUT"), Plan::Pass);
        assert_eq!(p("TRUNCATE t"), Plan::Write);
        assert_eq!(p("SELECT * FROM t FOR UPDATE"), Plan::Pass);
        assert_eq!(p("SELECT nextval('s'), count(*) FROM t"), Plan::Pass);
        assert_eq!(p("SELECT my_writer(1)"), Plan::Write);
        assert_eq!(
            p("SELECT lo_import('/tmp/x')"),
            Plan::Flagged {
                reason: "large object"
            }
        );
        assert_eq!(p("EXPLAIN ANALYZE UPDATE t SET a = 1"), Plan::Write);
        assert_eq!(
            p("CREATE TABLE x (id int)"),
            Plan::Ddl {
                secondary: Arc::from("CREATE TABLE x (id int)"),
                refill: None
            }
        );
        let refill = |sql: &str| match p(sql) {
            Plan::Ddl { refill, .. } => refill.map(|r| r.to_string()),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            refill("ALTER TABLE app.t ADD COLUMN at timestamptz NOT NULL DEFAULT now(), ADD COLUMN k uuid DEFAULT gen_random_uuid()"),
            Some("\"app\".\"t\"".into())
        );
        assert_eq!(
            refill("ALTER TABLE t ADD COLUMN n bigserial"),
            Some("\"t\"".into())
        );
        assert_eq!(
            refill("ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY"),
            Some("\"t\"".into())
        );
        assert_eq!(
            refill("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT CURRENT_TIMESTAMP"),
            Some("\"t\"".into())
        );
        assert_eq!(
            refill("ALTER TABLE t ALTER COLUMN v TYPE int USING length(v)"),
            Some("\"t\"".into())
        );
        assert_eq!(refill("ALTER TABLE t ADD COLUMN n int DEFAULT 7"), None);
        assert_eq!(
            refill("ALTER TABLE t ALTER COLUMN v SET DEFAULT now()"),
            None
        );
        assert_eq!(p("CREATE TEMP TABLE s (id int)"), Plan::Pass);
        assert_eq!(p("SELECT 1 AS a INTO TEMP scratch"), Plan::Pass);
        assert_eq!(p("CREATE TEMP TABLE scratch AS SELECT 1 AS a"), Plan::Pass);
        assert_eq!(
            p("CREATE INDEX CONCURRENTLY i ON t (a)"),
            Plan::Flagged {
                reason: "CREATE INDEX CONCURRENTLY"
            }
        );
        assert_eq!(p("RESET ALL"), Plan::ResetsClaim);
        assert_eq!(p("SET search_path = a"), Plan::Pass);
        assert_eq!(p("SELEC broken"), Plan::Pass);
    }

    #[test]
    fn create_table_as_reaches_the_secondary_without_rows() {
        let Plan::Ddl { secondary: s, .. } =
            p("CREATE TABLE t2 AS SELECT now() AS at, g FROM generate_series(1, 3) g")
        else {
            panic!("expected DDL with a secondary text");
        };
        assert!(s.ends_with("WITH NO DATA"), "{s}");
        let Plan::Ddl { secondary: s, .. } = p("SELECT * INTO t3 FROM t") else {
            panic!("expected DDL with a secondary text");
        };
        assert!(
            s.starts_with("CREATE TABLE t3 AS SELECT") && s.ends_with("WITH NO DATA"),
            "{s}"
        );
        assert_eq!(
            p("CREATE MATERIALIZED VIEW v AS SELECT 1"),
            Plan::Ddl {
                secondary: Arc::from("CREATE MATERIALIZED VIEW v AS SELECT 1"),
                refill: None
            }
        );
    }

    #[test]
    fn procedures_and_do_blocks() {
        assert_eq!(p("DO $$BEGIN INSERT INTO t VALUES (1); END$$"), Plan::Write);
        assert_eq!(
            p("DO $$BEGIN INSERT INTO t VALUES (1); COMMIT; END$$"),
            Plan::SelfCommitting
        );
        assert_eq!(p("CALL p(1)"), Plan::SelfCommitting);
        assert_eq!(p("CALL plain(1)"), Plan::Write);
        assert_eq!(p("SELECT my_reader(1)"), Plan::Pass);
        assert!(!controls_transactions("INSERT INTO commits VALUES (1)"));
        assert!(!controls_transactions(
            "INSERT INTO t VALUES (i, 'call'); -- commit later\n"
        ));
        assert!(!controls_transactions(
            "x := $q$ rollback $q$; /* commit */"
        ));
        assert!(controls_transactions("x := 1; COMMIT;"));
    }

    #[test]
    fn transaction_control() {
        assert_eq!(p("BEGIN"), Plan::Txn(TxnOp::Begin));
        assert_eq!(p("end"), Plan::Txn(TxnOp::Commit { chain: false }));
        assert_eq!(
            p("COMMIT AND CHAIN"),
            Plan::Txn(TxnOp::Commit { chain: true })
        );
        assert_eq!(p("PREPARE TRANSACTION 'x'"), Plan::Txn(TxnOp::Prepare));
        assert_eq!(p("COMMIT PREPARED 'x'"), Plan::Txn(TxnOp::FinishPrepared));
        assert_eq!(
            p("ROLLBACK TO SAVEPOINT a"),
            Plan::Txn(TxnOp::RollbackTo("a".into()))
        );
    }

    #[test]
    fn several_statements() {
        let Plan::Multi(pieces) =
            p("INSERT INTO t VALUES (1); BEGIN; INSERT INTO t VALUES (2); COMMIT")
        else {
            panic!("expected a multi-statement plan");
        };
        let texts: Vec<&str> = pieces.iter().map(|p| p.sql.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "INSERT INTO t VALUES (1)",
                "BEGIN",
                "INSERT INTO t VALUES (2)",
                "COMMIT"
            ]
        );
        assert_eq!(p("SELECT 1; SELECT 2"), Plan::Pass);
    }
}
