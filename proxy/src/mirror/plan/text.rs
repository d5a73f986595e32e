//! The statement texts a plan derives: whether a routine's source may end its
//! transaction, which ALTER TABLE refills its rows, CREATE TABLE AS without its data.

use pg_query::protobuf::ObjectType;
use pg_query::NodeEnum;
use std::sync::Arc;
use switchyard_core::ident::quote_ident;

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
pub(super) fn refilled(a: &pg_query::protobuf::AlterTableStmt) -> Option<Arc<str>> {
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
pub(super) fn without_data(parsed: &pg_query::ParseResult) -> Option<Arc<str>> {
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
