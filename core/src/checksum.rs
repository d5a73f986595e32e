//! Range checksums computed inside the database, and the queries around them: split
//! points, per-row hashes of a range, hashes of given keys.
//!
//! A range's checksum is `count(*)` and the `sum` of 64-bit row hashes, added as `numeric`
//! (no overflow, no wrap-around), so the result does not depend on row order and, unlike
//! XOR, two equal rows do not cancel out. The row is taken over an explicit column list
//! in a fixed order, so a different physical column order on the two servers does not
//! matter. How a row is hashed is a [`RowHash`]; both servers must use the same one. Text
//! forms depend on session settings: run these on sessions pinned with [`crate::session`].

use crate::catalog::TableMeta;
use crate::ident::quote_ident;
use crate::key::{texts_of, KeyRange, KeySql, KeyText, INT2_OID, INT4_OID, INT8_OID};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// How a row is turned into its 64-bit hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowHash {
    /// `hash_record_extended(ROW(...), 0)` (PostgreSQL 14 and later): columns of types
    /// whose equality is exactly equality of their text form (integers, text, uuid, bytea,
    /// timestamps, ...) are hashed natively; every other column (numeric, floats, json,
    /// intervals, arrays, domains: equal values that can print differently) goes in as its
    /// text. About 40 % cheaper than [`RowHash::Text`], with the same outcome.
    Record,
    /// `hashtextextended(ROW(...)::text, 0)`: the row's text form; any server version.
    Text,
}

impl RowHash {
    /// The mode two servers with these `server_version_num`s can both compute.
    pub fn for_versions(a: i32, b: i32) -> RowHash {
        if a >= 140_000 && b >= 140_000 {
            RowHash::Record
        } else {
            RowHash::Text
        }
    }
}

/// Types hashed natively by [`RowHash::Record`]: two values are equal exactly when their
/// text forms (under pinned session settings) are equal. bool, bytea, "char", name, int8,
/// int2, int4, text, oid, bpchar, varchar, date, time, timestamp, timestamptz, uuid.
const NATIVE_EXACT: &[u32] = &[
    16, 17, 18, 19, 20, 21, 23, 25, 26, 1042, 1043, 1082, 1083, 1114, 1184, 2950,
];

/// `server_version_num` of a server.
pub async fn server_version_num(client: &Client) -> Result<i32, ChecksumError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(ChecksumError::on("reading the server version", ""))?;
    Ok(row.get(0))
}

/// Rows and hash sum of one key range on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeChecksum {
    pub rows: i64,
    /// The sum of the row hashes as PostgreSQL prints the `numeric` (exact).
    pub sum: String,
}

impl RangeChecksum {
    /// The select items that compute it over the row hashes `hash` (an SQL expression).
    pub(crate) fn items(hash: &str) -> String {
        format!("count(*), coalesce(sum({hash}), 0)::text")
    }

    /// The count and sum in columns `first` and `first + 1` of `row`.
    pub(crate) fn from_row(row: &Row, first: usize) -> Self {
        RangeChecksum {
            rows: row.get(first),
            sum: row.get(first + 1),
        }
    }

    /// Runs `sql`, which selects [`RangeChecksum::items`] and nothing else.
    pub(crate) async fn query(
        client: &Client,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Self, tokio_postgres::Error> {
        let row = client.query_one(sql, params).await?;
        Ok(Self::from_row(&row, 0))
    }
}

/// A query of this module failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} on {table}")]
pub struct ChecksumError {
    pub what: &'static str,
    pub table: String,
    #[source]
    pub source: tokio_postgres::Error,
}

impl ChecksumError {
    /// Turns the failure of the query doing `what` on `table` into this error.
    pub(crate) fn on(
        what: &'static str,
        table: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> ChecksumError {
        let table = table.to_string();
        move |source| ChecksumError {
            what,
            table,
            source,
        }
    }
}

/// The SQL expression of a row's hash over an explicit column list, with or without a key.
#[derive(Debug, Clone)]
pub struct RowHashSql {
    /// Per hashed column in order: the quoted name, and for [`RowHash::Record`] how the
    /// value enters the row (empty: as it is; else e.g. `::text`).
    columns: Vec<(String, &'static str)>,
    mode: RowHash,
}

impl RowHashSql {
    /// Hashes `columns` (names of columns of `table`, in this order) the `mode` way. Both
    /// servers must use the same list and mode.
    pub fn new(table: &TableMeta, columns: &[String], mode: RowHash) -> Self {
        RowHashSql {
            columns: columns
                .iter()
                .map(|name| {
                    let how = match table.column(name) {
                        Some(c) if NATIVE_EXACT.contains(&c.type_oid) && c.collatable => {
                            // Byte-wise, whatever the column's collation.
                            " COLLATE \"C\""
                        }
                        Some(c) if NATIVE_EXACT.contains(&c.type_oid) => "",
                        _ => "::text",
                    };
                    (quote_ident(name), how)
                })
                .collect(),
            mode,
        }
    }

    /// The row hash expression (see [`RowHash`]), on columns of `alias` when given.
    pub fn expr(&self, alias: Option<&str>) -> String {
        let prefix = alias.map(|a| format!("{a}.")).unwrap_or_default();
        let cols = self
            .columns
            .iter()
            .map(|(c, how)| match self.mode {
                RowHash::Record => format!("({prefix}{c}{how})"),
                RowHash::Text => format!("{prefix}{c}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        match self.mode {
            RowHash::Record => format!("hash_record_extended(ROW({cols}), 0)"),
            RowHash::Text => format!("hashtextextended(ROW({cols})::text, 0)"),
        }
    }
}

/// The queries for one table, built once from its metadata and a column list.
#[derive(Debug, Clone)]
pub struct RangeQueries {
    table: String,
    display: String,
    key: KeySql,
    hash: RowHashSql,
    int_key: bool,
}

impl RangeQueries {
    /// Queries for `table` hashing `columns` (names of columns of `table`, in this order)
    /// the `mode` way. Both servers must use the same list and mode. `table` must have a
    /// primary key.
    pub fn new(table: &TableMeta, columns: &[String], mode: RowHash) -> Self {
        let int_key = table.primary_key.len() == 1
            && matches!(
                table.columns[table.primary_key[0]].type_oid,
                INT2_OID | INT4_OID | INT8_OID
            );
        RangeQueries {
            table: table.quoted(),
            display: table.qualified_name().to_string(),
            key: KeySql::new(table),
            hash: RowHashSql::new(table, columns, mode),
            int_key,
        }
    }

    /// The key fragments these queries use.
    pub fn key(&self) -> &KeySql {
        &self.key
    }

    /// True for a single-column integer key (arithmetic split points possible).
    pub fn has_int_key(&self) -> bool {
        self.int_key
    }

    fn row_hash(&self, alias: Option<&str>) -> String {
        self.hash.expr(alias)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ChecksumError {
        ChecksumError::on(what, &self.display)
    }

    /// `SELECT items FROM` the table `WHERE` its key is in `range`, and the statement's
    /// parameters.
    fn select_in_range(&self, items: &str, range: &KeyRange) -> (String, Vec<Option<String>>) {
        let mut params = Vec::new();
        let pred = self.key.range_predicate(range, 1, &mut params);
        let sql = format!("SELECT {items} FROM {} WHERE {pred}", self.table);
        (sql, params)
    }

    /// Count and hash sum of the rows in `range`.
    pub async fn checksum(
        &self,
        client: &Client,
        range: &KeyRange,
    ) -> Result<RangeChecksum, ChecksumError> {
        let items = RangeChecksum::items(&self.row_hash(None));
        let (sql, params) = self.select_in_range(&items, range);
        RangeChecksum::query(client, &sql, &refs(&params))
            .await
            .map_err(self.err("range checksum"))
    }

    /// Each row's key and hash in `range`. Used for ranges small enough to compare row by
    /// row; `limit` caps what is fetched.
    pub async fn row_hashes(
        &self,
        client: &Client,
        range: &KeyRange,
        limit: Option<i64>,
    ) -> Result<Vec<(KeyText, i64)>, ChecksumError> {
        let items = format!("{}, {}", self.key.text_select(None), self.row_hash(None));
        let (sql, params) = self.select_in_range(&items, range);
        let limit = limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let rows = client
            .query(&format!("{sql}{limit}"), &refs(&params))
            .await
            .map_err(self.err("row hashes"))?;
        let n = self.key.arity();
        Ok(rows
            .iter()
            .map(|r| (texts_of(r, 0..n), r.get::<_, i64>(n)))
            .collect())
    }

    /// Split points that cut `range` into pieces of about `every` rows: the key of every
    /// `every`-th row in byte order (one ordered scan of the range).
    pub async fn split_points(
        &self,
        client: &Client,
        range: &KeyRange,
        every: i64,
    ) -> Result<Vec<KeyText>, ChecksumError> {
        let every = every.max(1);
        let n = self.key.arity();
        let outs: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let inner: Vec<String> = self
            .key
            .text_exprs(None)
            .into_iter()
            .zip(&outs)
            .map(|(e, o)| format!("{e} AS {o}"))
            .collect();
        let items = format!(
            "{}, row_number() OVER (ORDER BY {}) AS rn",
            inner.join(", "),
            self.key.order_by()
        );
        let (numbered, params) = self.select_in_range(&items, range);
        let sql = format!(
            "SELECT {} FROM ({numbered}) s WHERE rn > 1 AND (rn - 1) % {every} = 0 ORDER BY rn",
            outs.join(", ")
        );
        let rows = client
            .query(&sql, &refs(&params))
            .await
            .map_err(self.err("split points"))?;
        Ok(rows.iter().map(|r| texts_of(r, 0..n)).collect())
    }

    /// Smallest and largest key of a single-column integer key; `None` for an empty table.
    pub async fn int_bounds(&self, client: &Client) -> Result<Option<(i64, i64)>, ChecksumError> {
        let k = self.key.names(None);
        let sql = format!("SELECT min({k})::int8, max({k})::int8 FROM {}", self.table);
        let row = client
            .query_one(&sql, &[])
            .await
            .map_err(self.err("key bounds"))?;
        Ok(
            match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
                (Some(lo), Some(hi)) => Some((lo, hi)),
                _ => None,
            },
        )
    }

    /// The planner's row estimate (`pg_class.reltuples`); 0 when never analysed.
    pub async fn estimated_rows(&self, client: &Client) -> Result<i64, ChecksumError> {
        let row = client
            .query_one(
                "SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class WHERE oid = $1::text::regclass",
                &[&self.table],
            )
            .await
            .map_err(self.err("row estimate"))?;
        Ok(row.get(0))
    }

    /// Row hashes of the given keys, by index into `keys`; a key without a row is absent
    /// from the map. One query per call: pass batches of a few thousand keys.
    pub async fn hashes_of_keys(
        &self,
        client: &Client,
        keys: &[KeyText],
    ) -> Result<HashMap<usize, i64>, ChecksumError> {
        let n = self.key.arity();
        let arrays = key_columns_as_arrays(keys, n);
        let unnest_params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        let u_cols: Vec<String> = (0..n).map(|i| format!("u.k{i}")).collect();
        let u_names: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let sql = format!(
            "SELECT u.ord, {} FROM {} AS t JOIN unnest({}) WITH ORDINALITY AS u({}, ord) \
             ON ({}) = ({})",
            self.row_hash(Some("t")),
            self.table,
            unnest_params.join(", "),
            u_names.join(", "),
            self.key.names(Some("t")),
            self.key.cast_list(&u_cols)
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = client
            .query(&sql, &params)
            .await
            .map_err(self.err("row hashes by key"))?;
        Ok(rows
            .iter()
            .map(|r| ((r.get::<_, i64>(0) - 1) as usize, r.get::<_, i64>(1)))
            .collect())
    }
}

/// Turns keys (rows of text values) into one text array per key column, for `unnest`.
pub fn key_columns_as_arrays(keys: &[KeyText], arity: usize) -> Vec<Vec<Option<String>>> {
    (0..arity)
        .map(|i| keys.iter().map(|k| k.get(i).cloned().flatten()).collect())
        .collect()
}

fn refs(params: &[Option<String>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Split points that cut the integer interval `[lo, hi]` into `parts` pieces of equal
/// width (fewer when the interval is narrower than `parts`).
pub fn int_split_points(lo: i64, hi: i64, parts: u64) -> Vec<KeyText> {
    let span = (hi as i128) - (lo as i128) + 1;
    let parts = (parts as i128).clamp(1, span.max(1));
    (1..parts)
        .map(|i| {
            let p = lo as i128 + span * i / parts;
            vec![Some(p.to_string())]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_mode_needs_14_on_both_sides() {
        assert_eq!(RowHash::for_versions(150_004, 140_000), RowHash::Record);
        assert_eq!(RowHash::for_versions(130_010, 150_000), RowHash::Text);
    }

    #[test]
    fn int_splits_are_even_and_inside() {
        assert_eq!(
            int_split_points(1, 100, 4),
            vec![
                vec![Some("26".to_string())],
                vec![Some("51".to_string())],
                vec![Some("76".to_string())]
            ]
        );
        assert!(int_split_points(5, 5, 10).is_empty());
        assert_eq!(int_split_points(1, 3, 10).len(), 2);
        let wide = int_split_points(i64::MIN, i64::MAX, 3);
        assert_eq!(wide.len(), 2);
        let first: i64 = wide[0][0].as_deref().unwrap().parse().unwrap();
        assert!(first > i64::MIN / 2 && first < 0);
    }
}
