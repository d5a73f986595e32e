//! Compares one table on two servers ("old" and "new"): checksums of primary-key ranges on
//! both sides at once, several ranges in parallel; a mismatching range is cut into
//! `bisection_factor` pieces (split points from the side with more rows) until it holds at
//! most `leaf_rows` rows, then its rows' keys and hashes are fetched from both sides and
//! merged by key. Rows that differ are re-read on both sides after a short delay, a few
//! times, and reported only if they still differ every time: a write in flight on a live,
//! dual-written pair does not raise a false alarm.
//!
//! Memory is bounded: at most `leaf_rows` rows per side per worker, and at most `max_keys`
//! differing keys listed per table (beyond that they are counted, not listed).

use crate::catalog::TableMeta;
use crate::checksum::{int_split_points, server_version_num, RangeQueries};
use crate::key::{KeyRange, KeyText};
use crate::session::pin_settings;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_postgres::Client;

pub use crate::checksum::{ChecksumError, RowHash};

/// One connection to each server; a diff runs one range at a time per pair.
pub struct Sides {
    pub old: Client,
    pub new: Client,
}

/// Tuning of a diff. The defaults suit tables from empty to hundreds of millions of rows.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Rows per range in the first pass (the table is cut into ranges of about this many).
    pub chunk_rows: u64,
    /// A mismatching range with at most this many rows (on the larger side) is compared
    /// row by row instead of being cut further.
    pub leaf_rows: u64,
    /// Pieces a mismatching range is cut into.
    pub bisection_factor: u64,
    /// Differing keys listed per table; more are counted only.
    pub max_keys: usize,
    /// How many times a differing row is re-read before it is reported.
    pub rechecks: u32,
    /// Pause before each re-read.
    pub recheck_delay: Duration,
    /// How rows are hashed; `None` picks the fastest both servers support.
    pub row_hash: Option<RowHash>,
}

impl DiffOptions {
    /// How rows are hashed on `sides`: as asked, else the fastest both servers support.
    pub(crate) async fn row_hash_on(&self, sides: &Sides) -> Result<RowHash, DiffError> {
        if let Some(mode) = self.row_hash {
            return Ok(mode);
        }
        let (v_old, v_new) = tokio::try_join!(
            server_version_num(&sides.old),
            server_version_num(&sides.new)
        )?;
        Ok(RowHash::for_versions(v_old, v_new))
    }
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            chunk_rows: 10_000,
            leaf_rows: 10_000,
            bisection_factor: 16,
            max_keys: 10_000,
            rechecks: 2,
            recheck_delay: Duration::from_millis(200),
            row_hash: None,
        }
    }
}

/// How a row differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiffKind {
    /// On old, not on new.
    MissingInNew,
    /// On new, not on old.
    ExtraInNew,
    /// On both, with different contents.
    Different,
}

/// A row that differs, by primary key (text forms, in key order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowDiff {
    pub kind: DiffKind,
    pub key: KeyText,
}

/// What a diff found in one table.
#[derive(Debug, Clone, Default)]
pub struct TableDiff {
    pub rows_old: u64,
    pub rows_new: u64,
    pub missing_in_new: u64,
    pub extra_in_new: u64,
    pub different: u64,
    /// Listed differing rows, sorted by kind then key (at most `max_keys`).
    pub rows: Vec<RowDiff>,
    /// More rows differed than were listed.
    pub truncated: bool,
    /// Rows that differed at first and were equal when re-read (writes in flight).
    pub transient: u64,
    /// Range checksums computed (on each side).
    pub ranges_checked: u64,
}

impl TableDiff {
    /// True when nothing differs.
    pub fn is_equal(&self) -> bool {
        self.missing_in_new == 0 && self.extra_in_new == 0 && self.different == 0
    }
}

/// Why a diff stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Query(#[from] ChecksumError),
    #[error("pinning session settings on the {side} server")]
    Session {
        side: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("table {0} has no primary key")]
    NoPrimaryKey(String),
    #[error("no connections given")]
    NoConnections,
    #[error("a diff worker failed: {0}")]
    Worker(String),
}

/// Shared state of one table's diff.
struct Ctx {
    q: RangeQueries,
    opts: DiffOptions,
    /// Keys still allowed to be listed.
    budget: AtomicUsize,
}

impl Ctx {
    /// Reserves up to `n` listing slots; returns how many were granted.
    fn reserve(&self, n: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                granted = left.min(n);
                Some(left - granted)
            });
        granted
    }
}

/// What checking one range produced.
#[derive(Default)]
struct Step {
    top_counts: Option<(u64, u64)>,
    children: Vec<KeyRange>,
    suspects: Vec<RowDiff>,
    unlisted: [u64; 3],
}

fn kind_index(kind: DiffKind) -> usize {
    match kind {
        DiffKind::MissingInNew => 0,
        DiffKind::ExtraInNew => 1,
        DiffKind::Different => 2,
    }
}

/// Compares `table` (its metadata as on old; both servers must have these `columns`) on
/// the two servers of each pair in `pairs`; as many ranges run at once as there are pairs.
/// Pins the session settings of every connection first.
pub async fn diff_table(
    pairs: &[Arc<Sides>],
    table: &TableMeta,
    columns: &[String],
    opts: &DiffOptions,
) -> Result<TableDiff, DiffError> {
    if table.primary_key.is_empty() {
        return Err(DiffError::NoPrimaryKey(table.qualified_name().to_string()));
    }
    let first = pairs.first().ok_or(DiffError::NoConnections)?.clone();
    for p in pairs {
        for (side, client) in [("old", &p.old), ("new", &p.new)] {
            pin_settings(client)
                .await
                .map_err(|source| DiffError::Session { side, source })?;
            // Thousands of small queries: JIT compilation would cost more than it saves.
            client
                .batch_execute("SET jit = off")
                .await
                .map_err(|source| DiffError::Session { side, source })?;
        }
    }
    let mode = opts.row_hash_on(&first).await?;
    let ctx = Arc::new(Ctx {
        q: RangeQueries::new(table, columns, mode),
        opts: opts.clone(),
        budget: AtomicUsize::new(opts.max_keys),
    });
    let top = top_ranges(&first, &ctx).await?;
    let mut result = TableDiff::default();
    let mut suspects = Vec::new();
    let mut unlisted = [0u64; 3];

    // Each idle pair takes the next range; a finished range may queue its pieces.
    let mut idle: Vec<Arc<Sides>> = pairs.to_vec();
    let mut todo: VecDeque<(KeyRange, bool)> = top.into_iter().map(|r| (r, true)).collect();
    let mut running = JoinSet::new();
    loop {
        while !todo.is_empty() && !idle.is_empty() {
            let (range, is_top) = todo.pop_front().expect("checked non-empty");
            let sides = idle.pop().expect("checked non-empty");
            let ctx = ctx.clone();
            running.spawn(async move {
                let step = check_range(&sides, &ctx, &range, is_top).await;
                (sides, step)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (sides, step) = joined.map_err(|e| DiffError::Worker(e.to_string()))?;
        idle.push(sides);
        let step = step?;
        result.ranges_checked += 1;
        if let Some((o, n)) = step.top_counts {
            result.rows_old += o;
            result.rows_new += n;
        }
        todo.extend(step.children.into_iter().map(|r| (r, false)));
        suspects.extend(step.suspects);
        for (u, s) in unlisted.iter_mut().zip(step.unlisted) {
            *u += s;
        }
    }

    let before = suspects.len() as u64;
    let confirmed = recheck(&first, &ctx, suspects).await?;
    result.transient = before - confirmed.len() as u64;
    result.missing_in_new = unlisted[0];
    result.extra_in_new = unlisted[1];
    result.different = unlisted[2];
    for d in &confirmed {
        match d.kind {
            DiffKind::MissingInNew => result.missing_in_new += 1,
            DiffKind::ExtraInNew => result.extra_in_new += 1,
            DiffKind::Different => result.different += 1,
        }
    }
    result.truncated = unlisted.iter().any(|&u| u > 0);
    result.rows = confirmed;
    result.rows.sort();
    Ok(result)
}

/// First-pass ranges: arithmetic cuts of [min, max] for an integer key, else every
/// `chunk_rows`-th key of the larger side in byte order.
async fn top_ranges(sides: &Sides, ctx: &Ctx) -> Result<Vec<KeyRange>, DiffError> {
    let q = &ctx.q;
    let (est_old, est_new) =
        tokio::try_join!(q.estimated_rows(&sides.old), q.estimated_rows(&sides.new))?;
    let chunk = ctx.opts.chunk_rows.max(1);
    if q.has_int_key() {
        let (b_old, b_new) = tokio::try_join!(q.int_bounds(&sides.old), q.int_bounds(&sides.new))?;
        let (lo, hi) = match (b_old, b_new) {
            (None, None) => return Ok(vec![KeyRange::all()]),
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => (a.0.min(b.0), a.1.max(b.1)),
        };
        let mut est = est_old.max(est_new) as u64;
        if est == 0 {
            // Never analysed: count (one scan) rather than guess from a sparse key span.
            let all = KeyRange::all();
            let (c_old, c_new) =
                tokio::try_join!(q.checksum(&sides.old, &all), q.checksum(&sides.new, &all))?;
            est = c_old.rows.max(c_new.rows) as u64;
        }
        let parts = est.div_ceil(chunk).max(1);
        return Ok(KeyRange::all().split_at(int_split_points(lo, hi, parts)));
    }
    let (client, est) = if est_new > est_old {
        (&sides.new, est_new)
    } else {
        (&sides.old, est_old)
    };
    if (est as u64) <= chunk && est > 0 {
        return Ok(vec![KeyRange::all()]);
    }
    let points = q
        .split_points(client, &KeyRange::all(), chunk as i64)
        .await?;
    Ok(KeyRange::all().split_at(points))
}

/// Checks one range: equal, or cut into pieces, or compared row by row.
async fn check_range(
    sides: &Sides,
    ctx: &Ctx,
    range: &KeyRange,
    is_top: bool,
) -> Result<Step, DiffError> {
    let q = &ctx.q;
    let (a, b) = tokio::try_join!(q.checksum(&sides.old, range), q.checksum(&sides.new, range))?;
    let mut step = Step {
        top_counts: is_top.then_some((a.rows as u64, b.rows as u64)),
        ..Step::default()
    };
    if a == b {
        return Ok(step);
    }
    // Only one side has rows: each of them differs, no need to look at the other side.
    if a.rows == 0 || b.rows == 0 {
        let (client, kind, n) = if b.rows == 0 {
            (&sides.old, DiffKind::MissingInNew, a.rows as u64)
        } else {
            (&sides.new, DiffKind::ExtraInNew, b.rows as u64)
        };
        let listed = ctx.reserve(n as usize);
        if listed > 0 {
            let rows = q.row_hashes(client, range, Some(listed as i64)).await?;
            let got = rows.len() as u64;
            step.suspects
                .extend(rows.into_iter().map(|(key, _)| RowDiff { kind, key }));
            step.unlisted[kind_index(kind)] += n.saturating_sub(got);
        } else {
            step.unlisted[kind_index(kind)] += n;
        }
        return Ok(step);
    }
    let larger = a.rows.max(b.rows) as u64;
    if larger > ctx.opts.leaf_rows {
        let client = if b.rows > a.rows {
            &sides.new
        } else {
            &sides.old
        };
        let every = larger.div_ceil(ctx.opts.bisection_factor.max(2)) as i64;
        let points = q.split_points(client, range, every).await?;
        if !points.is_empty() {
            step.children = range.split_at(points);
            return Ok(step);
        }
        // Rows moved under us (live writes): compare what is there.
    }
    let (old_rows, new_rows) = tokio::try_join!(
        q.row_hashes(&sides.old, range, None),
        q.row_hashes(&sides.new, range, None)
    )?;
    let mut old_map: HashMap<KeyText, i64> = old_rows.into_iter().collect();
    let mut found = Vec::new();
    for (key, hash) in new_rows {
        match old_map.remove(&key) {
            Some(h) if h == hash => {}
            Some(_) => found.push(RowDiff {
                kind: DiffKind::Different,
                key,
            }),
            None => found.push(RowDiff {
                kind: DiffKind::ExtraInNew,
                key,
            }),
        }
    }
    found.extend(old_map.into_keys().map(|key| RowDiff {
        kind: DiffKind::MissingInNew,
        key,
    }));
    let listed = ctx.reserve(found.len());
    for d in found.drain(listed..) {
        step.unlisted[kind_index(d.kind)] += 1;
    }
    step.suspects = found;
    Ok(step)
}

/// Keys re-read per query during the re-check.
const RECHECK_BATCH: usize = 1000;

/// Re-reads the suspects on both sides `rechecks` times after a pause; keeps those that
/// differ every time, classified by the last read.
async fn recheck(
    sides: &Sides,
    ctx: &Ctx,
    mut suspects: Vec<RowDiff>,
) -> Result<Vec<RowDiff>, DiffError> {
    for _ in 0..ctx.opts.rechecks {
        if suspects.is_empty() {
            break;
        }
        tokio::time::sleep(ctx.opts.recheck_delay).await;
        let mut still = Vec::with_capacity(suspects.len());
        for batch in suspects.chunks(RECHECK_BATCH) {
            let keys: Vec<KeyText> = batch.iter().map(|d| d.key.clone()).collect();
            let (old, new) = tokio::try_join!(
                ctx.q.hashes_of_keys(&sides.old, &keys),
                ctx.q.hashes_of_keys(&sides.new, &keys)
            )?;
            for (i, key) in keys.into_iter().enumerate() {
                let kind = match (old.get(&i), new.get(&i)) {
                    (Some(a), Some(b)) if a == b => continue,
                    (None, None) => continue,
                    (Some(_), Some(_)) => DiffKind::Different,
                    (Some(_), None) => DiffKind::MissingInNew,
                    (None, Some(_)) => DiffKind::ExtraInNew,
                };
                still.push(RowDiff { kind, key });
            }
        }
        suspects = still;
    }
    Ok(suspects)
}
