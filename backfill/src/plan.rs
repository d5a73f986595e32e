//! Which tables are copied, in what order, and how each is cut into half-open key ranges.
//!
//! A single-column integer key whose values are dense is cut arithmetically (`[min, max]`
//! into equal widths: no scan). Every other key (uuid, text, composite, and sparse
//! integer keys, where equal widths would give wildly uneven chunks) is cut by an ordered
//! keyset scan of the old table: the key of every `chunk_rows`-th row in byte order
//! (`COLLATE "C"`), so both servers agree on which rows a range holds. The first and last
//! ranges are open-ended, so rows written later outside `[min, max]` still belong to a
//! chunk.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use switchyard_core::catalog::{list_user_tables, load_table, CatalogError, TableMeta};
use switchyard_core::checksum::{int_split_points, RangeQueries, RowHash};
use switchyard_core::ident::quote_ident;
use switchyard_core::ident::QualifiedName;
use switchyard_core::key::{KeyRange, KeyText};
use tokio_postgres::Client;

/// A table that will be copied.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub name: QualifiedName,
    /// `"schema"."name"`: the table's key in the chunk table.
    pub quoted: String,
    /// The table on old (its columns and key drive every statement).
    pub old: TableMeta,
    /// The table on new (same columns; used for re-syncing rows there).
    pub new: TableMeta,
    /// Columns written by the copy: all but generated ones, in old's order.
    pub columns: Vec<String>,
    /// Quoted names of tables this one references (loaded first under `fk-mode order`).
    pub depends_on: Vec<String>,
    /// New has no primary key on this table (bulk mode dropped it; `new`'s key is taken
    /// from old's). Anything else is an error, checked once the chunk table is read.
    pub key_missing_on_new: bool,
}

impl TablePlan {
    /// The copied columns, quoted, comma-separated (the order COPY streams them in).
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a table is not copied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub table: String,
    pub reason: String,
}

/// The tables to copy, in load order, and the ones left out with a reason.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Tables with a primary key: copied in key ranges.
    pub tables: Vec<TablePlan>,
    /// Tables without one: copied whole in one snapshot after the keyed ones (`keyless`).
    pub keyless: Vec<TablePlan>,
    pub skipped: Vec<Skipped>,
}

/// Picks the tables: the requested ones (every user table of old when none), minus the
/// excluded; a requested table missing on old, or any table missing on new or with other
/// columns there, is an error (the schema must be on new before the backfill); a table
/// without a primary key goes to `keyless`.
pub async fn select_tables(
    old: &Client,
    new: &Client,
    requested: &[QualifiedName],
    excluded: &[QualifiedName],
    respect_fks: bool,
) -> Result<Selection> {
    let names: Vec<QualifiedName> = if requested.is_empty() {
        list_user_tables(old)
            .await
            .context("listing the tables of the old database")?
    } else {
        requested.to_vec()
    };
    let mut seen = BTreeSet::new();
    let mut tables = Vec::new();
    let mut keyless = Vec::new();
    let skipped = Vec::new();
    for name in names {
        if excluded.contains(&name) || !seen.insert(name.clone()) {
            continue;
        }
        let old_meta = match load_table(old, &name).await {
            Ok(m) => m,
            Err(CatalogError::NotFound(_)) => {
                bail!("table {name} does not exist on the old database")
            }
            Err(e) => return Err(e).context("reading the old database's catalog"),
        };
        let mut new_meta = match load_table(new, &name).await {
            Ok(m) => m,
            Err(CatalogError::NotFound(_)) => bail!(
                "table {name} does not exist on the new database: create the schema there first"
            ),
            Err(e) => return Err(e).context("reading the new database's catalog"),
        };
        let key_missing_on_new = new_meta.primary_key.is_empty();
        if old_meta.primary_key.is_empty() {
            keyless.push(planned(name, old_meta, new_meta, false)?);
            continue;
        }
        if key_missing_on_new {
            // Dropped by bulk mode (checked later): the key is old's, by column name.
            let mut key = Vec::new();
            for c in old_meta.key_columns() {
                match new_meta.columns.iter().position(|n| n.name == c.name) {
                    Some(i) => key.push(i),
                    None => bail!("column {}.{} is missing on the new database", name, c.name),
                }
            }
            new_meta.primary_key = key;
        }
        tables.push(planned(name, old_meta, new_meta, key_missing_on_new)?);
    }
    if respect_fks {
        let edges = foreign_keys(new).await?;
        let shown: BTreeMap<String, String> = tables
            .iter()
            .map(|t| (t.quoted.clone(), t.name.to_string()))
            .collect();
        if let Err(cyclic) = order_by_references(&mut tables, &edges) {
            let names: Vec<&str> = cyclic
                .iter()
                .map(|q| shown.get(q).map_or(q.as_str(), String::as_str))
                .collect();
            bail!(
                "tables {} reference themselves or each other, or depend on such tables: no \
                 load order keeps their foreign keys satisfied; load them with --fk-mode \
                 replica (no load order: the loading sessions do not check foreign keys) or \
                 leave them out with --exclude",
                names.join(", ")
            );
        }
    }
    Ok(Selection {
        tables,
        keyless,
        skipped,
    })
}

/// The writable columns of old, each present on new with the same type and the same
/// primary key: binary COPY needs exactly matching types.
/// The plan of table `name`, as on old and on new, once their columns agree; the tables
/// it references are filled in later.
fn planned(
    name: QualifiedName,
    old: TableMeta,
    new: TableMeta,
    key_missing_on_new: bool,
) -> Result<TablePlan> {
    let columns = check_columns(&name, &old, &new)?;
    Ok(TablePlan {
        key_missing_on_new,
        quoted: old.quoted(),
        name,
        old,
        new,
        columns,
        depends_on: Vec::new(),
    })
}

fn check_columns(name: &QualifiedName, old: &TableMeta, new: &TableMeta) -> Result<Vec<String>> {
    let mut columns = Vec::new();
    for c in old.writable_columns() {
        match new.column(&c.name) {
            Some(n) if n.type_name == c.type_name && !n.generated => columns.push(c.name.clone()),
            Some(n) => bail!(
                "column {}.{} is {} on old but {}{} on new",
                name,
                c.name,
                c.type_name,
                n.type_name,
                if n.generated { " (generated)" } else { "" }
            ),
            None => bail!("column {}.{} is missing on the new database", name, c.name),
        }
    }
    let old_key: Vec<&str> = old.key_columns().map(|c| c.name.as_str()).collect();
    let new_key: Vec<&str> = new.key_columns().map(|c| c.name.as_str()).collect();
    if old_key != new_key {
        bail!("table {name} has primary key {old_key:?} on old but {new_key:?} on new");
    }
    Ok(columns)
}

/// Foreign keys on new as (referencing, referenced) quoted names.
async fn foreign_keys(new: &Client) -> Result<Vec<(String, String)>> {
    let rows = new
        .query(
            "SELECT cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
             JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_catalog.pg_class p ON p.oid = k.confrelid \
             JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE k.contype = 'f'",
            &[],
        )
        .await
        .context("reading the foreign keys of the new database")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).quoted(),
                QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)).quoted(),
            )
        })
        .collect())
}

/// Sorts `tables` so referenced tables come first and fills `depends_on`. Tables that
/// reference themselves or each other in a cycle cannot be ordered (a chunk could hold a
/// row whose referenced row is in a later chunk): their names are returned as the error,
/// for `fk-mode replica`, which loads them with the checks off.
pub fn order_by_references(
    tables: &mut Vec<TablePlan>,
    edges: &[(String, String)],
) -> Result<(), Vec<String>> {
    let selected: BTreeSet<String> = tables.iter().map(|t| t.quoted.clone()).collect();
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut cyclic: BTreeSet<String> = BTreeSet::new();
    for (child, parent) in edges {
        if !selected.contains(child) || !selected.contains(parent) {
            continue;
        }
        if child == parent {
            cyclic.insert(child.clone());
        } else {
            parents
                .entry(child.clone())
                .or_default()
                .insert(parent.clone());
        }
    }
    // Kahn's algorithm, keeping the given order among tables that are ready together.
    let mut remaining: Vec<TablePlan> = std::mem::take(tables);
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|t| {
            parents
                .get(&t.quoted)
                .is_none_or(|ps| ps.iter().all(|p| placed.contains(p)))
        });
        let Some(index) = ready else {
            cyclic.extend(remaining.iter().map(|t| t.quoted.clone()));
            break;
        };
        let mut t = remaining.remove(index);
        t.depends_on = parents
            .get(&t.quoted)
            .map(|ps| ps.iter().cloned().collect())
            .unwrap_or_default();
        placed.insert(t.quoted.clone());
        tables.push(t);
    }
    if cyclic.is_empty() {
        Ok(())
    } else {
        Err(cyclic.into_iter().collect())
    }
}

/// How a table was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// `int-range` or `keyset`.
    pub method: &'static str,
    pub estimated_rows: i64,
    pub ranges: Vec<KeyRange>,
}

/// A dense integer key's values fill at least this share of `[min, max]`; sparser keys are
/// cut by keyset.
const DENSE_SHARE: i128 = 4;

/// Cuts `plan`'s table on old into ranges of about `chunk_rows` rows.
pub async fn split_table(old: &Client, plan: &TablePlan, chunk_rows: u64) -> Result<Split> {
    let q = RangeQueries::new(&plan.old, &plan.columns, RowHash::Text);
    let mut estimated = q
        .estimated_rows(old)
        .await
        .with_context(|| format!("estimating the rows of {}", plan.name))?;
    if estimated == 0 {
        // Never analysed (or empty): count, so a fresh table is not one giant chunk.
        let row = old
            .query_one(&format!("SELECT count(*) FROM {}", plan.quoted), &[])
            .await
            .with_context(|| format!("counting the rows of {}", plan.name))?;
        estimated = row.get(0);
    }
    let chunk_rows = chunk_rows.max(1) as i64;
    if q.has_int_key() {
        let bounds = q
            .int_bounds(old)
            .await
            .with_context(|| format!("reading the key bounds of {}", plan.name))?;
        let Some((lo, hi)) = bounds else {
            return Ok(Split {
                method: "int-range",
                estimated_rows: 0,
                ranges: vec![KeyRange::all()],
            });
        };
        let span = hi as i128 - lo as i128 + 1;
        if span <= DENSE_SHARE * estimated.max(1) as i128 {
            let parts = (estimated.max(1) as u64).div_ceil(chunk_rows as u64).max(1);
            let points = int_split_points(lo, hi, parts);
            return Ok(Split {
                method: "int-range",
                estimated_rows: estimated,
                ranges: KeyRange::all().split_at(points),
            });
        }
    }
    let points: Vec<KeyText> = q
        .split_points(old, &KeyRange::all(), chunk_rows)
        .await
        .with_context(|| format!("reading the split points of {}", plan.name))?;
    Ok(Split {
        method: "keyset",
        estimated_rows: estimated,
        ranges: KeyRange::all().split_at(points),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::catalog::ColumnMeta;

    fn plan(name: &str) -> TablePlan {
        let meta = TableMeta {
            schema: "public".into(),
            name: name.into(),
            columns: vec![ColumnMeta {
                name: "id".into(),
                type_name: "integer".into(),
                type_oid: 23,
                not_null: true,
                identity: None,
                generated: false,
                collatable: false,
            }],
            primary_key: vec![0],
        };
        TablePlan {
            name: meta.qualified_name(),
            quoted: meta.quoted(),
            old: meta.clone(),
            new: meta,
            columns: vec!["id".into()],
            depends_on: Vec::new(),
            key_missing_on_new: false,
        }
    }

    fn q(n: &str) -> String {
        QualifiedName::new("public", n).quoted()
    }

    #[test]
    fn referenced_tables_come_first() {
        let mut tables = vec![
            plan("line"),
            plan("orders"),
            plan("customer"),
            plan("other"),
        ];
        let edges = vec![
            (q("line"), q("orders")),
            (q("orders"), q("customer")),
            (q("line"), q("line")),
            (q("line"), q("not_selected")),
        ];
        order_by_references(&mut tables, &edges).expect_err("line references itself");
        let mut tables = vec![
            plan("line"),
            plan("orders"),
            plan("customer"),
            plan("other"),
        ];
        order_by_references(&mut tables, &edges[..2]).expect("no cycle");
        let order: Vec<&str> = tables.iter().map(|t| t.name.name.as_str()).collect();
        assert_eq!(order, vec!["customer", "orders", "line", "other"]);
        assert_eq!(tables[2].depends_on, vec![q("orders")]);
        assert!(tables[0].depends_on.is_empty());
    }

    #[test]
    fn cycles_are_named() {
        let mut tables = vec![plan("a"), plan("b"), plan("c"), plan("d")];
        let edges = vec![(q("a"), q("b")), (q("b"), q("a")), (q("c"), q("a"))];
        let cyclic = order_by_references(&mut tables, &edges).expect_err("a and b cycle");
        assert_eq!(cyclic, vec![q("a"), q("b"), q("c")]);
    }
}
