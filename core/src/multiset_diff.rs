//! Compares a table without a primary key on two servers as multisets of rows: whole-table
//! checksums first (one scan per side); when they differ, per-bucket checksums (one more
//! scan), then the row hashes and multiplicities of the differing buckets, then the
//! differing rows re-read a few times (a write in flight on a live, dual-written pair must
//! not raise a false alarm) and listed with how many copies each side holds.
//!
//! Memory is bounded: bucket checksums (at most 2^20 per side), the hashes of a batch of
//! differing buckets, and at most `max_keys` listed rows.

use crate::catalog::TableMeta;
use crate::diff::{DiffError, DiffOptions, Sides};
use crate::multiset::{bucket_bits, MultisetQueries, RowImage};
use crate::session::pin_settings;
use std::collections::{BTreeSet, HashMap};

/// Rows of differing buckets fetched per statement (hash and count, per side).
const BUCKET_BATCH_ROWS: i64 = 200_000;

/// A row image whose copies differ in number between the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultisetRow {
    /// The row's 64-bit hash (the same on both sides).
    pub hash: i64,
    pub image: RowImage,
    /// Copies on old and on new.
    pub old_copies: i64,
    pub new_copies: i64,
}

/// What a multiset diff found in one table.
#[derive(Debug, Clone, Default)]
pub struct MultisetDiff {
    pub rows_old: u64,
    pub rows_new: u64,
    /// Copies on old beyond new's (summed over row images).
    pub missing_in_new: u64,
    /// Copies on new beyond old's.
    pub extra_in_new: u64,
    /// Listed rows, most differing copies first (at most `max_keys`).
    pub rows: Vec<MultisetRow>,
    /// More rows differed than were listed (the counts above then include, for the unlisted
    /// buckets, at least the difference of their row counts).
    pub truncated: bool,
    /// Row images that differed at first and were equal when re-read.
    pub transient: u64,
    /// Checksums computed per side: the table's, then its buckets'.
    pub ranges_checked: u64,
}

impl MultisetDiff {
    pub fn is_equal(&self) -> bool {
        self.missing_in_new == 0 && self.extra_in_new == 0
    }
}

/// Compares `table` (no primary key needed; its metadata as on old) over `columns` on the
/// two servers of `sides`. Pins the session settings of both connections first.
pub async fn diff_multiset(
    sides: &Sides,
    table: &TableMeta,
    columns: &[String],
    opts: &DiffOptions,
) -> Result<MultisetDiff, DiffError> {
    for (side, client) in [("old", &sides.old), ("new", &sides.new)] {
        pin_settings(client)
            .await
            .map_err(|source| DiffError::Session { side, source })?;
    }
    let mode = opts.row_hash_on(sides).await?;
    let q = MultisetQueries::new(table, columns, mode);
    let mut out = MultisetDiff::default();
    let (a, b) = tokio::try_join!(q.checksum(&sides.old, None), q.checksum(&sides.new, None))?;
    out.ranges_checked = 1;
    out.rows_old = a.rows as u64;
    out.rows_new = b.rows as u64;
    if a == b {
        return Ok(out);
    }

    let bits = bucket_bits(out.rows_old.max(out.rows_new), opts.leaf_rows);
    let (ba, bb) = tokio::try_join!(q.buckets(&sides.old, bits), q.buckets(&sides.new, bits))?;
    out.ranges_checked += ba.len().max(bb.len()) as u64;
    let differing: Vec<(i64, i64)> = ba
        .keys()
        .chain(bb.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| ba.get(k) != bb.get(k))
        .map(|k| {
            let rows = |m: &HashMap<i64, crate::checksum::RangeChecksum>| {
                m.get(k).map(|c| c.rows).unwrap_or(0)
            };
            (*k, rows(&ba).max(rows(&bb)))
        })
        .collect();

    // Hash multiplicities of the differing buckets, a batch at a time, until enough rows
    // are listed; the buckets beyond count by their row-count difference only.
    let mut suspects: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut rest = differing.as_slice();
    while !rest.is_empty() && suspects.len() < opts.max_keys {
        let mut take = 0;
        let mut rows = 0;
        while take < rest.len() && (take == 0 || rows + rest[take].1 <= BUCKET_BATCH_ROWS) {
            rows += rest[take].1;
            take += 1;
        }
        let batch: Vec<i64> = rest[..take].iter().map(|(k, _)| *k).collect();
        rest = &rest[take..];
        let (ca, cb) = tokio::try_join!(
            q.counts_in_buckets(&sides.old, bits, &batch),
            q.counts_in_buckets(&sides.new, bits, &batch)
        )?;
        for (h, (o, n)) in merge_counts(&ca, &cb) {
            if o != n {
                suspects.insert(h, (o, n));
            }
        }
    }
    for (k, _) in rest {
        let count = |m: &HashMap<i64, crate::checksum::RangeChecksum>| {
            m.get(k).map(|c| c.rows).unwrap_or(0)
        };
        add_copies(&mut out, count(&ba), count(&bb));
        out.truncated = true;
    }

    let before = suspects.len() as u64;
    let confirmed = recheck(sides, &q, opts, suspects).await?;
    out.transient = before - confirmed.len() as u64;
    let mut listed: Vec<(i64, (i64, i64))> = confirmed.into_iter().collect();
    listed.sort_by_key(|(h, (o, n))| (std::cmp::Reverse((o - n).abs()), *h));
    for (_, (o, n)) in &listed {
        add_copies(&mut out, *o, *n);
    }
    if listed.len() > opts.max_keys {
        listed.truncate(opts.max_keys);
        out.truncated = true;
    }
    out.rows = with_images(sides, &q, listed).await?;
    Ok(out)
}

fn add_copies(out: &mut MultisetDiff, old: i64, new: i64) {
    if old > new {
        out.missing_in_new += (old - new) as u64;
    } else {
        out.extra_in_new += (new - old) as u64;
    }
}

/// Every hash of either side with its (old, new) copies.
fn merge_counts(old: &HashMap<i64, i64>, new: &HashMap<i64, i64>) -> HashMap<i64, (i64, i64)> {
    let mut m: HashMap<i64, (i64, i64)> = old.iter().map(|(h, c)| (*h, (*c, 0))).collect();
    for (h, c) in new {
        m.entry(*h).or_insert((0, 0)).1 = *c;
    }
    m
}

/// Hashes re-read per statement during the re-check.
const RECHECK_BATCH: usize = 1000;

/// Re-reads the copies of each suspect on both sides `rechecks` times after a pause; keeps
/// those that differ every time, with the last read's counts.
async fn recheck(
    sides: &Sides,
    q: &MultisetQueries,
    opts: &DiffOptions,
    mut suspects: HashMap<i64, (i64, i64)>,
) -> Result<HashMap<i64, (i64, i64)>, DiffError> {
    for _ in 0..opts.rechecks {
        if suspects.is_empty() {
            break;
        }
        tokio::time::sleep(opts.recheck_delay).await;
        let hashes: Vec<i64> = suspects.keys().copied().collect();
        let mut still = HashMap::new();
        for batch in hashes.chunks(RECHECK_BATCH) {
            let (ca, cb) = tokio::try_join!(
                q.counts_of(&sides.old, batch),
                q.counts_of(&sides.new, batch)
            )?;
            for h in batch {
                let o = ca.get(h).copied().unwrap_or(0);
                let n = cb.get(h).copied().unwrap_or(0);
                if o != n {
                    still.insert(*h, (o, n));
                }
            }
        }
        suspects = still;
    }
    Ok(suspects)
}

/// The listed rows with their images, read from the side holding more copies.
async fn with_images(
    sides: &Sides,
    q: &MultisetQueries,
    listed: Vec<(i64, (i64, i64))>,
) -> Result<Vec<MultisetRow>, DiffError> {
    let mut from_old = Vec::new();
    let mut from_new = Vec::new();
    for (h, (o, n)) in &listed {
        if o > n {
            from_old.push(*h);
        } else {
            from_new.push(*h);
        }
    }
    let mut images = HashMap::new();
    for batch in from_old.chunks(RECHECK_BATCH) {
        images.extend(q.images(&sides.old, batch).await?);
    }
    for batch in from_new.chunks(RECHECK_BATCH) {
        images.extend(q.images(&sides.new, batch).await?);
    }
    Ok(listed
        .into_iter()
        .filter_map(|(hash, (old_copies, new_copies))| {
            // A row gone since the re-check has nothing to show; the next verify tells.
            images.remove(&hash).map(|image| MultisetRow {
                hash,
                image,
                old_copies,
                new_copies,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_count_both_ways() {
        let mut d = MultisetDiff::default();
        add_copies(&mut d, 3, 1);
        add_copies(&mut d, 0, 2);
        assert_eq!((d.missing_in_new, d.extra_in_new), (2, 2));
        assert!(!d.is_equal());
        let old = HashMap::from([(1, 2), (2, 1)]);
        let new = HashMap::from([(2, 1), (3, 4)]);
        let m = merge_counts(&old, &new);
        assert_eq!(m[&1], (2, 0));
        assert_eq!(m[&2], (1, 1));
        assert_eq!(m[&3], (0, 4));
    }
}
