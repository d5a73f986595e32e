//! Collation surprises per query shape: a text sort that orders (or, under a limit, cuts)
//! differently on the two databases. An application paging through such a result sees
//! other rows after the cutover, so these are confirmed mismatches of their own kind
//! (`collation`) until the operator accepts the shape (`shadow.accept_collation`).

use super::analyze::Shape;
use super::digest::{same_rows, Column, Difference, Digest, Mode};
use super::error::SideError;
use super::exec::{Limits, Pool, Statement};
use super::stats::FingerprintStats;
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The label of the difference, in `differences`, samples and metrics.
pub const COLLATION: &str = "collation";

/// One shape with a collation difference, or accepted for one, for `/api/mismatches`.
#[derive(Debug, Clone, Serialize)]
pub struct CollationShape {
    pub fingerprint: String,
    /// The statement with constants replaced by `$n`; empty for an accepted shape not
    /// sampled yet.
    pub query: String,
    /// Collation differences confirmed as mismatches.
    pub confirmed: u64,
    /// Collation differences counted as accepted.
    pub accepted: u64,
    /// Listed in `shadow.accept_collation`.
    pub accepted_by_setting: bool,
}

/// The shapes that saw a collation difference or are accepted, most confirmed first.
pub fn shapes(
    fingerprints: &BTreeMap<String, FingerprintStats>,
    accepted: &HashSet<u64>,
) -> Vec<CollationShape> {
    let mut out: Vec<CollationShape> = fingerprints
        .iter()
        .filter_map(|(fp, e)| {
            let confirmed = e.differences.get(COLLATION).copied().unwrap_or(0);
            let acc = e.accepted_differences.get(COLLATION).copied().unwrap_or(0);
            let by_setting = u64::from_str_radix(fp, 16).is_ok_and(|f| accepted.contains(&f));
            (confirmed > 0 || acc > 0 || by_setting).then(|| CollationShape {
                fingerprint: fp.clone(),
                query: e.query.clone(),
                confirmed,
                accepted: acc,
                accepted_by_setting: by_setting,
            })
        })
        .collect();
    let seen: HashSet<&str> = out.iter().map(|s| s.fingerprint.as_str()).collect();
    let mut unseen: Vec<CollationShape> = accepted
        .iter()
        .map(|f| format!("{f:016x}"))
        .filter(|f| !seen.contains(f.as_str()))
        .map(|fingerprint| CollationShape {
            fingerprint,
            query: String::new(),
            confirmed: 0,
            accepted: 0,
            accepted_by_setting: true,
        })
        .collect();
    unseen.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    out.sort_by(|a, b| {
        b.confirmed
            .cmp(&a.confirmed)
            .then(b.accepted.cmp(&a.accepted))
    });
    out.extend(unseen);
    out
}

/// Both sides' sort collations for a confirmed collation difference, and the difference
/// it really is. When both sides name the same collations, each with a known version (or
/// a bytewise one such as "C"), the sort cannot be the cause: under a limit it is a changed
/// value in the sort column (`rows`), else an `order` difference, never something an
/// accepted shape would hide. Unknown collations (an expression, the database default
/// whose library version is not looked up) leave it `collation`.
pub async fn explain(
    (a_pool, b_pool): (&Pool, &Pool),
    (a, b): (&Digest, &Digest),
    limits: Limits,
) -> (Difference, (Vec<String>, Vec<String>)) {
    let (on_a, on_b) = tokio::join!(
        sort_collations(a_pool, a, limits),
        sort_collations(b_pool, b, limits)
    );
    let limited = matches!(a.mode, Mode::Ordered { limited: true, .. });
    let wanted = a.text_sort_columns().len();
    let diff = classify(wanted, (&on_a, &on_b), limited, same_rows(a, b));
    let names = |v: Vec<SortCollation>| v.into_iter().map(|c| c.shown).collect();
    (diff, (names(on_a), names(on_b)))
}

/// The difference, from the collations found for `wanted` text sort columns.
fn classify(
    wanted: usize,
    (on_a, on_b): (&[SortCollation], &[SortCollation]),
    limited: bool,
    same_rows: bool,
) -> Difference {
    let known_alike =
        wanted > 0 && on_a.len() == wanted && on_a == on_b && on_a.iter().all(|c| c.comparable);
    match known_alike {
        false => Difference::Collation,
        true if limited || !same_rows => Difference::Rows,
        true => Difference::Order,
    }
}

/// One text sort column's collation on one side.
#[derive(Debug, PartialEq, Eq)]
struct SortCollation {
    /// `name: collation (provider, version)`.
    shown: String,
    /// Equal names mean equal order: not the database default (whose version is not
    /// looked up).
    comparable: bool,
}

/// One table column's collation as the operator would name it: name, provider and, where
/// the library reports one, its version (a glibc or ICU upgrade changes it); for the
/// database default, the database's locale. Second column: whether it is not the default.
const LOOKUP: &str = "SELECT coalesce(c.collname::text || ' (' || CASE c.collprovider \
      WHEN 'i' THEN 'icu' WHEN 'c' THEN 'libc' ELSE 'default' END, 'none (') \
    || CASE WHEN c.oid = 100 THEN ', database ' || (SELECT datcollate FROM pg_database \
      WHERE datname = current_database()) ELSE '' END \
    || coalesce(', version ' || CASE WHEN c.oid <> 100 THEN \
      pg_collation_actual_version(c.oid) END, '') || ')', \
    (c.oid IS NOT NULL AND c.oid <> 100)::text \
  FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation \
  WHERE a.attrelid = $1 AND a.attnum = $2";

/// Each text sort column of `d`, looked up on the database that produced it; a column that
/// is no table's (an expression) or a failed lookup is left out: this only explains a
/// difference already confirmed.
async fn sort_collations(pool: &Pool, d: &Digest, limits: Limits) -> Vec<SortCollation> {
    let mut out = Vec::new();
    for c in d.text_sort_columns() {
        if let Some((name, comparable)) = lookup(pool, c, limits).await {
            out.push(SortCollation {
                shown: format!("{}: {name}", c.name),
                comparable,
            });
        }
    }
    out
}

async fn lookup(pool: &Pool, c: &Column, limits: Limits) -> Option<(String, bool)> {
    let (table, attnum) = c.source?;
    let params = [
        Some(Bytes::from(table.to_string())),
        Some(Bytes::from(attnum.to_string())),
    ];
    let stmt = Statement {
        sql: LOOKUP,
        // oid, int2, both in text.
        param_types: &[26, 21],
        param_formats: &[],
        params: &params,
        settings: &[],
    };
    let shape = Shape {
        order: Vec::new(),
        limited: false,
    };
    let limits = Limits {
        max_kept: 1,
        keep_values: true,
        statement_timeout: limits.statement_timeout.min(Duration::from_secs(2)),
        ..limits
    };
    let (mut conn, _) = pool.get().await.ok()?;
    let r = conn.run(pool.role(), &stmt, &shape, limits).await;
    if !r.as_ref().is_err_and(SideError::poisons_connection) {
        pool.put(conn);
    }
    let d = r.ok()?;
    let (_, row) = d.values?.into_iter().next()?;
    let mut row = row.into_iter();
    let name = row.next().flatten()?;
    let comparable = row.next().flatten().is_some_and(|v| v == "true");
    Some((name, comparable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll(shown: &str, comparable: bool) -> SortCollation {
        SortCollation {
            shown: shown.into(),
            comparable,
        }
    }

    #[test]
    fn the_same_known_collation_on_both_sides_is_not_the_cause() {
        let c = [coll("name: C (libc)", true)];
        let icu = [coll("name: und-x-icu (icu, version 153.120)", true)];
        let dflt = [coll("name: default (default, database en_US.utf8)", false)];
        assert_eq!(classify(1, (&c, &icu), false, true), Difference::Collation);
        assert_eq!(classify(1, (&c, &icu), true, false), Difference::Collation);
        assert_eq!(classify(1, (&c, &c), true, false), Difference::Rows);
        assert_eq!(classify(1, (&c, &c), true, true), Difference::Rows);
        assert_eq!(classify(1, (&c, &c), false, true), Difference::Order);
        // The default's library version is unknown: a glibc upgrade may be the cause.
        assert_eq!(
            classify(1, (&dflt, &dflt), true, false),
            Difference::Collation
        );
        // A column not looked up (an expression): unknown.
        assert_eq!(classify(2, (&c, &c), true, false), Difference::Collation);
        assert_eq!(classify(1, (&[], &[]), true, false), Difference::Collation);
    }

    #[test]
    fn lists_confirmed_accepted_and_configured_shapes() {
        let mut f = BTreeMap::new();
        let mut confirmed = FingerprintStats {
            query: "SELECT name FROM t ORDER BY name".into(),
            ..Default::default()
        };
        confirmed.differences.insert(COLLATION, 2);
        f.insert(format!("{:016x}", 1), confirmed);
        let mut rows_only = FingerprintStats::default();
        rows_only.differences.insert("rows", 1);
        f.insert(format!("{:016x}", 2), rows_only);
        let mut accepted = FingerprintStats::default();
        accepted.accepted_differences.insert(COLLATION, 3);
        f.insert(format!("{:016x}", 3), accepted);
        let list = shapes(&f, &HashSet::from([3, 4]));
        let got: Vec<_> = list
            .iter()
            .map(|s| {
                (
                    s.fingerprint.as_str(),
                    s.confirmed,
                    s.accepted,
                    s.accepted_by_setting,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("0000000000000001", 2, 0, false),
                ("0000000000000003", 0, 3, true),
                ("0000000000000004", 0, 0, true),
            ]
        );
    }
}
