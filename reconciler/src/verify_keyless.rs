//! verify and repair of a table without a primary key on either side: compared as a
//! multiset of rows ([`switchyard_core::multiset_diff`]), repaired by copies of row images
//! ([`switchyard_core::multiset_repair`]).

use crate::cli::SourceSide;
use crate::report::RepairMode;
use crate::report::{RepairReport, RowReport, Status, TableReport};
use anyhow::{Context, Result};
use switchyard_core::catalog::TableMeta;
use switchyard_core::connect::Writer;
use switchyard_core::diff::{DiffOptions, RowHash, Sides};
use switchyard_core::multiset_diff::{diff_multiset, MultisetDiff};
use switchyard_core::multiset_repair::repair_copies;
use switchyard_core::resync::ResyncCounts;
use tokio_postgres::Client;

/// Verify-and-repair rounds when more row images differ than are listed at once.
const MAX_REPAIR_PASSES: u32 = 100;

/// The table as on old and new, and the columns compared.
pub struct Keyless<'a> {
    pub old: &'a TableMeta,
    pub new: &'a TableMeta,
    pub columns: &'a [String],
}

/// Compares the table and, with `repair`, fixes it; fills `t`.
pub async fn run(
    t: &mut TableReport,
    sides: &Sides,
    table: Keyless<'_>,
    opts: &DiffOptions,
    mode: RowHash,
    repair: Option<(RepairMode, Option<&mut (Client, Writer)>)>,
) -> Result<()> {
    let opts = DiffOptions {
        row_hash: Some(mode),
        ..opts.clone()
    };
    let diff = diff_multiset(sides, table.old, table.columns, &opts).await?;
    fill(t, &diff);
    let Some((mode_r, clients)) = repair else {
        return Ok(());
    };
    if diff.is_equal() {
        return Ok(());
    }
    let mut r = RepairReport {
        source: match mode_r.source {
            SourceSide::Old => "old",
            SourceSide::New => "new",
        },
        dry_run: mode_r.dry_run,
        ..RepairReport::default()
    };
    let target_meta = match mode_r.source {
        SourceSide::Old => table.new,
        SourceSide::New => table.old,
    };
    let Some((source, target)) = clients else {
        // Dry run: the copies the listed rows need, without touching anything.
        r.passes = 1;
        for row in &diff.rows {
            let (have, want) = match mode_r.source {
                SourceSide::Old => (row.new_copies, row.old_copies),
                SourceSide::New => (row.old_copies, row.new_copies),
            };
            if want > have {
                r.upserted += (want - have) as u64;
            } else {
                r.deleted += (have - want) as u64;
            }
        }
        t.repair = Some(r);
        return Ok(());
    };
    let mut total = ResyncCounts::default();
    let mut diff = diff;
    loop {
        r.passes += 1;
        let hashes: Vec<i64> = diff.rows.iter().map(|d| d.hash).collect();
        total += repair_copies(source, target, target_meta, table.columns, mode, &hashes)
            .await
            .with_context(|| format!("repairing {} row images", hashes.len()))?;
        if !diff.truncated || r.passes >= MAX_REPAIR_PASSES {
            break;
        }
        diff = diff_multiset(sides, table.old, table.columns, &opts).await?;
        if diff.is_equal() {
            break;
        }
    }
    r.upserted = total.upserted;
    r.deleted = total.deleted;
    r.unchanged = total.unchanged;
    t.status = Status::Repaired;
    t.repair = Some(r);
    Ok(())
}

fn fill(t: &mut TableReport, d: &MultisetDiff) {
    t.status = if d.is_equal() {
        Status::Equal
    } else {
        Status::Different
    };
    t.rows_old = d.rows_old;
    t.rows_new = d.rows_new;
    t.missing_in_new = d.missing_in_new;
    t.extra_in_new = d.extra_in_new;
    t.different = 0;
    t.transient = d.transient;
    t.truncated = d.truncated;
    t.ranges_checked = d.ranges_checked;
    t.rows = d.rows.iter().map(RowReport::from).collect();
}
