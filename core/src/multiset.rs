//! Queries over a table taken as a multiset of rows: what a table without a primary key
//! is. No key names a row, so two sides are compared by how many copies of each row image
//! they hold. A whole table's (or a slice's) checksum is `count(*)` and the `numeric` sum
//! of the 64-bit row hashes, as for key ranges ([`crate::checksum`]): order-independent,
//! and two equal rows add up instead of cancelling out, so duplicates count.
//!
//! Narrowing down works on hash buckets (the low bits of a row's hash): every row image
//! falls in one bucket on both sides, so a bucket whose count or sum differs holds every
//! copy that differs, and within it rows are grouped by hash with their multiplicities.

use crate::catalog::TableMeta;
use crate::checksum::{ChecksumError, RangeChecksum, RowHash, RowHashSql};
use crate::ident::quote_ident;
use crate::key::texts_of;
use std::collections::HashMap;
use tokio_postgres::Client;

/// A row image by its hash: its text forms, one per compared column (SQL NULL is None),
/// and the whole row as PostgreSQL prints a record, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowImage {
    pub values: Vec<Option<String>>,
    pub text: String,
}

/// The queries for one table, built once from its metadata and a column list.
#[derive(Debug, Clone)]
pub struct MultisetQueries {
    table: String,
    display: String,
    hash: RowHashSql,
    /// The compared columns, quoted, in order.
    columns: Vec<String>,
}

impl MultisetQueries {
    /// Queries for `table` over `columns` (names of its columns, in this order), rows hashed
    /// the `mode` way; both servers must use the same list and mode.
    pub fn new(table: &TableMeta, columns: &[String], mode: RowHash) -> Self {
        MultisetQueries {
            table: table.quoted(),
            display: table.qualified_name().to_string(),
            hash: RowHashSql::new(table, columns, mode),
            columns: columns.iter().map(|c| quote_ident(c)).collect(),
        }
    }

    fn err(&self, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ChecksumError {
        ChecksumError::on(what, &self.display)
    }

    /// The rows' hashes as column `h`, with `extra` select items, as a subquery; `filter`
    /// (an SQL predicate on the table's columns, e.g. a `ctid` range) restricts the rows.
    fn hashed(&self, extra: &str, filter: Option<&str>) -> String {
        let filter = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        format!(
            "(SELECT {} AS h{extra} FROM {}{filter}) s",
            self.hash.expr(None),
            self.table
        )
    }

    /// Count and hash sum of the table's rows (those matching `filter` when given).
    pub async fn checksum(
        &self,
        client: &Client,
        filter: Option<&str>,
    ) -> Result<RangeChecksum, ChecksumError> {
        let sql = format!(
            "SELECT {} FROM {}",
            RangeChecksum::items("h"),
            self.hashed("", filter)
        );
        RangeChecksum::query(client, &sql, &[])
            .await
            .map_err(self.err("table checksum"))
    }

    /// Count and hash sum per bucket of the low `bits` bits of the row hash; buckets
    /// without rows are absent.
    pub async fn buckets(
        &self,
        client: &Client,
        bits: u32,
    ) -> Result<HashMap<i64, RangeChecksum>, ChecksumError> {
        let sql = format!(
            "SELECT h & {}, count(*), sum(h)::text FROM {} GROUP BY 1",
            mask(bits),
            self.hashed("", None)
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(self.err("bucket checksums"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0), RangeChecksum::from_row(r, 1)))
            .collect())
    }

    /// How many copies of each row hash the given buckets hold.
    pub async fn counts_in_buckets(
        &self,
        client: &Client,
        bits: u32,
        buckets: &[i64],
    ) -> Result<HashMap<i64, i64>, ChecksumError> {
        let bucket = format!("h & {}", mask(bits));
        self.counts_where(client, &bucket, buckets, "row hashes of buckets")
            .await
    }

    /// How many copies of each given row hash the table holds (absent: none).
    pub async fn counts_of(
        &self,
        client: &Client,
        hashes: &[i64],
    ) -> Result<HashMap<i64, i64>, ChecksumError> {
        self.counts_where(client, "h", hashes, "copies of rows")
            .await
    }

    /// How many copies of each row hash `h` the table holds, for the rows whose `of` (an
    /// expression of `h`) is one of `values`.
    async fn counts_where(
        &self,
        client: &Client,
        of: &str,
        values: &[i64],
        what: &'static str,
    ) -> Result<HashMap<i64, i64>, ChecksumError> {
        let sql = format!(
            "SELECT h, count(*) FROM {} WHERE {of} = ANY($1) GROUP BY h",
            self.hashed("", None)
        );
        let rows = client
            .query(&sql, &[&values])
            .await
            .map_err(self.err(what))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One row image per given hash the table holds.
    pub async fn images(
        &self,
        client: &Client,
        hashes: &[i64],
    ) -> Result<HashMap<i64, RowImage>, ChecksumError> {
        let texts: String = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!(", {c}::text AS v{i}"))
            .collect();
        let all = self.columns.join(", ");
        let extra = format!(", ROW({all})::text AS r{texts}");
        let outs: String = (0..self.columns.len()).map(|i| format!(", v{i}")).collect();
        let sql = format!(
            "SELECT DISTINCT ON (h) h, r{outs} FROM {} WHERE h = ANY($1)",
            self.hashed(&extra, None)
        );
        let rows = client
            .query(&sql, &[&hashes])
            .await
            .map_err(self.err("row images"))?;
        let n = self.columns.len();
        Ok(rows
            .iter()
            .map(|r| {
                let image = RowImage {
                    text: r.get(1),
                    values: texts_of(r, 2..n + 2),
                };
                (r.get::<_, i64>(0), image)
            })
            .collect())
    }

    /// The predicate selecting the rows whose hash is `$param` (for statements on one
    /// table: `DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid FROM t WHERE <this> LIMIT n))`).
    pub fn hash_is(&self, param: usize) -> String {
        format!("{} = ${param}", self.hash.expr(None))
    }
}

/// The mask of the low `bits` bits (0 bits: every row in bucket 0).
pub fn mask(bits: u32) -> i64 {
    if bits == 0 {
        0
    } else {
        (1i64 << bits.min(62)) - 1
    }
}

/// Bucket bits so that a bucket holds about `per_bucket` of `rows` rows (at most 2^20
/// buckets: the bucket list of both sides stays a few megabytes).
pub fn bucket_bits(rows: u64, per_bucket: u64) -> u32 {
    let buckets = rows.div_ceil(per_bucket.max(1)).clamp(1, 1 << 20);
    buckets.next_power_of_two().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_about_the_asked_rows() {
        assert_eq!(bucket_bits(0, 10_000), 0);
        assert_eq!(bucket_bits(10_000, 10_000), 0);
        assert_eq!(bucket_bits(10_001, 10_000), 1);
        assert_eq!(bucket_bits(10_000_000, 10_000), 10);
        assert_eq!(bucket_bits(u64::MAX, 1), 20);
        assert_eq!(mask(0), 0);
        assert_eq!(mask(10), 1023);
    }
}
