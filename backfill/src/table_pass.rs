//! Bulk mode's verification in one pass: while a chunk is copied, the rows relayed from
//! old are hashed on the way (`core::copy_hash`, no extra work for old) and the sum is
//! recorded with the chunk. Once every chunk of the table is copied, one worker reads the
//! whole table back from new in a single binary `COPY` (a sequential scan: the key is not
//! needed, so this runs while another worker rebuilds the indexes), hashes the rows the
//! same way, sums them per chunk by key and compares each chunk with old's figure.
//!
//! A chunk that matches is `done`. One that differs goes back to `copied` without old's
//! figure: once the key is rebuilt, the range-by-range check in SQL (`chunk_check`)
//! compares it with old as it is then and repairs it.
//!
//! Only for tables with a single integer key column whose columns all have a binary form
//! that is the same on both servers (`copy_hash::stream_hashable`); others are verified
//! range by range.

use crate::chunk_index::ChunkIndex;
use crate::chunk_table::{self, ChunkOutcome, PassChunk};
use crate::copy::read_hashed;
use crate::plan::TablePlan;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchyard_core::copy_conn::CopyConn;
use switchyard_core::copy_hash::{int_key, stream_hashable, CopyHasher, StreamSum};
use switchyard_core::ident::quote_literal;
use switchyard_core::key::{INT2_OID, INT4_OID, INT8_OID};
use tokio::sync::watch;
use tokio_postgres::Client;

/// True when the table's rows hash the same from either server's binary COPY.
pub fn stream_hashable_plan(plan: &TablePlan) -> bool {
    stream_hashable(
        plan.columns
            .iter()
            .map(|c| plan.old.column(c).map_or(u32::MAX, |m| m.type_oid)),
    )
}

/// Where the key is in the copied columns, when the table can be verified in one pass.
pub fn pass_key(plan: &TablePlan) -> Option<usize> {
    let [key] = plan.old.primary_key.as_slice() else {
        return None;
    };
    let key = &plan.old.columns[*key];
    if !matches!(key.type_oid, INT2_OID | INT4_OID | INT8_OID) || !stream_hashable_plan(plan) {
        return None;
    }
    plan.columns.iter().position(|c| *c == key.name)
}

/// Block ranges per pass session: the sessions take them in turn, so one that waited
/// (see `read_parts`) finds work left and none idles while another still reads.
const PARTS_PER_SESSION: usize = 8;

/// How often the pass looks whether an index build on its table is still running.
const HOLD_POLL: Duration = Duration::from_millis(100);

/// The outcome of a pass: chunks that matched, and chunks that differ with the reason.
pub struct PassResult {
    pub done: Vec<(PassChunk, ChunkOutcome)>,
    pub differ: Vec<(PassChunk, String)>,
}

/// Reads `plan`'s table back from new and compares it with the claimed chunks: in one
/// binary COPY per session of `conns`, each over its own range of the table's blocks, all
/// in one snapshot (so together they read the table exactly once). `new` reads the
/// table's size.
pub async fn run(
    new: &Client,
    conns: &mut [&mut CopyConn],
    plan: &TablePlan,
    key_field: usize,
    chunks: Vec<PassChunk>,
) -> Result<PassResult> {
    let started = Instant::now();
    let order = ChunkIndex::new(chunks.iter().map(|c| &c.claim.range))?;
    let parts = block_ranges(new, plan, conns.len() * PARTS_PER_SESSION).await?;
    let used = parts.len().min(conns.len());
    let conns = &mut conns[..used];
    let read = {
        // Only extra sessions give way; the first failpoint's test needs them reading
        // while the first waits, the second's needs them giving way.
        let give_way = used > 1 && (!failpoint_first_read_waits() || failpoint_others_give_way());
        let held = give_way && index_build_running(new, plan).await.unwrap_or(false);
        let (hold_tx, hold_rx) = watch::channel(held);
        let reads = read_parts(
            conns,
            plan,
            &parts,
            key_field,
            &order,
            chunks.len(),
            hold_rx,
        );
        tokio::pin!(reads);
        if give_way {
            let watch_builds = hold_while_indexes_build(new, plan, hold_tx);
            tokio::pin!(watch_builds);
            tokio::select! {
                read = &mut reads => read,
                () = &mut watch_builds => reads.await,
            }
        } else {
            drop(hold_tx);
            reads.await
        }
    };
    if read.is_err() {
        // A session may still be in the pass's transaction (the setup failed halfway).
        for conn in conns.iter_mut() {
            if !conn.is_broken() {
                conn.execute("ROLLBACK")
                    .await
                    .context("ending the verification pass on new")?;
            }
        }
    }
    let (sums, stray) = read?;
    if stray > 0 {
        tracing::debug!(table = %plan.name, rows = stray, "Rows outside the chunks of this pass (verified range by range).");
    }
    let per_chunk_ms = (started.elapsed().as_millis() as i64) / (chunks.len().max(1) as i64);
    let mut result = PassResult {
        done: Vec::new(),
        differ: Vec::new(),
    };
    for (chunk, new_sum) in chunks.into_iter().zip(sums) {
        if new_sum.rows == chunk.rows_old && new_sum.text() == chunk.checksum_old {
            let outcome = ChunkOutcome {
                rows_old: chunk.rows_old,
                rows_new: new_sum.rows,
                checksum_old: chunk.checksum_old.clone(),
                checksum_new: new_sum.text(),
                verify_ms: per_chunk_ms,
                ..ChunkOutcome::checked(true, "bulk")
            };
            result.done.push((chunk, outcome));
        } else {
            let why = format!(
                "differs from the rows read from old ({} rows {} on old, {} rows {} on new): \
                 checked again range by range after the rebuild",
                chunk.rows_old,
                chunk.checksum_old,
                new_sum.rows,
                new_sum.text()
            );
            result.differ.push((chunk, why));
        }
    }
    Ok(result)
}

/// Predicates splitting the table's heap into at most `max_parts` block ranges, the
/// first and last open-ended. One (no predicate) when the server has no TID range scans
/// (before PostgreSQL 14) or the table is partitioned (block numbers are per partition).
async fn block_ranges(new: &Client, plan: &TablePlan, max_parts: usize) -> Result<Vec<String>> {
    let row = new
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 140000 AND c.relkind = 'r', \
                    pg_relation_size(c.oid) / current_setting('block_size')::bigint \
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&plan.quoted],
        )
        .await
        .with_context(|| format!("reading the size of {} on new", plan.name))?;
    let (splittable, blocks): (bool, i64) = (row.get(0), row.get(1));
    Ok(block_range_predicates(
        blocks,
        if splittable { max_parts } else { 1 },
    ))
}

/// `parts` (at most one per block) predicates on `ctid` that together cover every row of
/// a heap of `blocks` blocks, and any block added after, exactly once.
fn block_range_predicates(blocks: i64, parts: usize) -> Vec<String> {
    let parts = (parts as i64).clamp(1, blocks.max(1));
    (0..parts)
        .map(|i| {
            let lo = blocks * i / parts;
            let hi = blocks * (i + 1) / parts;
            match (i, i + 1 == parts) {
                (0, true) => "true".to_string(),
                (0, false) => format!("ctid < '({hi},0)'::tid"),
                (_, true) => format!("ctid >= '({lo},0)'::tid"),
                _ => format!("ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid"),
            }
        })
        .collect()
}

/// Starts a transaction on every session in one snapshot (exported by the first), then
/// the sessions take the block ranges in turn, read and hash them; per-chunk sums added
/// up, and the count of rows outside every chunk.
///
/// While `hold` is true (an index is being built on the table), only the first session
/// reads: the others wait, with no lock on the table yet. A parallel index build ends
/// with its leader merging and writing the index alone; a pass that took both cores from the
/// start finished first and left one idle for that last second. Held back, the pass
/// gives the build's workers the cores and is still reading when the leader works
/// alone.
///
/// Each session ends its transaction as soon as no range is left, never waiting for the
/// others: a session that held its lock on the table until every read ended would make
/// a deadlock PostgreSQL cannot see. An `ACCESS EXCLUSIVE` request (the rebuild's
/// `ADD PRIMARY KEY USING INDEX`, or a migration) queued behind that finished session's
/// lock, while a session not yet started queued behind the request, waits for ever. For
/// the same reason the other sessions' setup takes no lock on the table (a session
/// queued there behind such a request would hold up the reads of the others; each takes
/// its lock as its read starts), and `hold` is false as soon as
/// any lock request waits: a session that then queues behind the request has its range
/// to itself, and the others read the rest and end, which lets the request through.
#[allow(clippy::too_many_arguments)]
async fn read_parts(
    conns: &mut [&mut CopyConn],
    plan: &TablePlan,
    parts: &[String],
    key_field: usize,
    order: &ChunkIndex,
    chunk_count: usize,
    hold: watch::Receiver<bool>,
) -> Result<(Vec<StreamSum>, u64)> {
    let setup = "BEGIN ISOLATION LEVEL REPEATABLE READ";
    // Worker sessions turn sequential scans off for their range reads; here one is right.
    // Each session takes its lock on the table before any read. A session held back
    // while an index is built would otherwise ask for it only when the build ends, and
    // by then the key's `ADD PRIMARY KEY USING INDEX` often waits for its ACCESS
    // EXCLUSIVE lock (behind the reading session): the held session queued behind it and
    // the first read the rest alone, one core idle for the last second or two.
    // The other sessions take theirs in their own reads, not in the setup below: one
    // queued there behind such a request would keep every session from reading while the
    // first holds its lock, which the request waits for.
    let seqscan = format!(
        "SET LOCAL enable_seqscan = on; LOCK TABLE {} IN ACCESS SHARE MODE",
        plan.quoted
    );
    let (first, rest) = conns
        .split_first_mut()
        .context("a verification pass needs a session")?;
    first
        .execute(&format!("{setup}; {seqscan}"))
        .await
        .context("starting the verification pass on new")?;
    if !rest.is_empty() {
        let snapshot = first
            .copy_out_text("COPY (SELECT pg_export_snapshot()) TO STDOUT")
            .await
            .context("exporting the verification pass's snapshot on new")?;
        let snapshot = snapshot.trim();
        #[cfg(feature = "failpoints")]
        if failpoint_setup_waits() {
            wait_for_lock_request(first, plan).await;
        }
        // Before any read: the first session ends its transaction, and the snapshot with
        // it, once no range is left.
        for conn in rest.iter_mut() {
            conn.execute(&format!(
                "{setup}; SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot)
            ))
            .await
            .context("sharing the verification pass's snapshot on new")?;
        }
    }
    let columns = &plan.column_list();
    let next = AtomicUsize::new(0);
    // Set once every range is taken: a held session then ends, whatever `hold` says.
    let (all_taken, taken) = watch::channel(false);
    let reads = conns.iter_mut().enumerate().map(|(i, conn)| {
        let (next, all_taken, seqscan) = (&next, &all_taken, &seqscan);
        let (mut hold, mut taken) = (hold.clone(), taken.clone());
        async move {
            let mut sums = vec![StreamSum::default(); chunk_count];
            let mut stray = 0u64;
            let mut ranges = 0usize;
            let read = async {
                if i > 0 {
                    conn.execute(seqscan)
                        .await
                        .context("locking the table for the verification pass on new")?;
                }
                loop {
                    if i > 0 {
                        // An error means the watch is over: go on.
                        tokio::select! {
                            _ = hold.wait_for(|held| !*held) => {}
                            _ = taken.wait_for(|all| *all) => {}
                        }
                    }
                    let Some(pred) = parts.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        all_taken.send_replace(true);
                        return anyhow::Ok(());
                    };
                    let sql = format!(
                        "COPY (SELECT {columns} FROM {} WHERE {pred}) TO STDOUT (FORMAT binary)",
                        plan.quoted
                    );
                    #[cfg(feature = "failpoints")]
                    if i == 0 && failpoint_first_read_waits() {
                        wait_for_lock_request(conn, plan).await;
                    }
                    let mut hasher = CopyHasher::new(key_field);
                    read_hashed(conn, &sql, &mut hasher, |hash, key| {
                        let slot = key.and_then(int_key).and_then(|k| order.slot(k));
                        match slot {
                            Some(i) => sums[i].add(hash),
                            None => stray += 1,
                        }
                    })
                    .await
                    .with_context(|| format!("reading {} back from new", plan.name))?
                    .and_then(|()| hasher.finish())
                    .with_context(|| format!("hashing {} read back from new", plan.name))?;
                    ranges += 1;
                }
            }
            .await;
            // Read-only: ROLLBACK also ends a transaction a failed COPY aborted.
            if !conn.is_broken() {
                conn.execute("ROLLBACK")
                    .await
                    .context("ending the verification pass on new")?;
            }
            read?;
            anyhow::Ok((sums, stray, ranges))
        }
    });
    let mut total = vec![StreamSum::default(); chunk_count];
    let mut stray = 0;
    let mut per_session = Vec::new();
    for part in futures_util::future::join_all(reads).await {
        let (sums, s, ranges) = part?;
        for (t, p) in total.iter_mut().zip(sums) {
            t.merge(p);
        }
        stray += s;
        per_session.push(ranges);
    }
    tracing::debug!(table = %plan.name, ranges = ?per_session, "Verification pass: block ranges read per session.");
    Ok((total, stray))
}

/// True while an index is being built on the table and no lock request waits anywhere in
/// the database. False when the server cannot tell: the progress view shows other
/// roles' builds only to privileged users.
async fn index_build_running(
    new: &Client,
    plan: &TablePlan,
) -> Result<bool, tokio_postgres::Error> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_create_index p \
                                      WHERE p.relid = $1::text::regclass \
                                        AND p.command = 'CREATE INDEX') \
                          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l WHERE NOT l.granted)";
    Ok(new.query_one(SQL, &[&plan.quoted]).await?.get(0))
}

/// Keeps `hold` up to date with [`index_build_running`]; on an error it lets go (false)
/// and stops.
async fn hold_while_indexes_build(new: &Client, plan: &TablePlan, hold: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(HOLD_POLL).await;
        match index_build_running(new, plan).await {
            Ok(running) => {
                hold.send_replace(running);
            }
            Err(e) => {
                tracing::debug!(table = %plan.name, error = %e, "Reading index builds for the pass failed; it reads on every session.");
                hold.send_replace(false);
                return;
            }
        }
    }
}

/// Tests only: the pass's first read starts once another session waits for a lock on
/// the table (at most 5 s), so the other reads are over or running by then.
fn failpoint_first_read_waits() -> bool {
    crate::failpoint::armed("pass-first-read-waits-for-lock")
        || crate::failpoint::armed("pass-first-read-waits-others-give-way")
}

/// Tests only: the other sessions are set up only once a lock request waits on the
/// table (the key's rebuild queued behind the first session's lock).
#[cfg(feature = "failpoints")]
fn failpoint_setup_waits() -> bool {
    crate::failpoint::armed("pass-setup-waits-for-lock")
}

/// Tests only: with the first read waiting, the other sessions still give way to index
/// builds.
fn failpoint_others_give_way() -> bool {
    crate::failpoint::armed("pass-first-read-waits-others-give-way")
}

#[cfg(feature = "failpoints")]
async fn wait_for_lock_request(conn: &mut CopyConn, plan: &TablePlan) {
    let sql = format!(
        "COPY (SELECT count(*) FROM pg_catalog.pg_locks \
               WHERE relation = {}::regclass AND NOT granted) TO STDOUT",
        quote_literal(&plan.quoted)
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while Instant::now() < deadline {
        match conn.copy_out_text(&sql).await {
            Ok(n) if n.trim() != "0" => {
                tracing::warn!(table = %plan.name, "Failpoint: a lock request waits on the table; the pass's first read starts.");
                return;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => {
                tracing::warn!(error = %e, "Failpoint: reading pg_locks failed.");
                return;
            }
        }
    }
}

/// Records a pass's results; returns the rows of the chunks now done.
pub async fn record(
    control: &Client,
    worker: &str,
    result: PassResult,
    mut on_done: impl FnMut(&str, u64),
) -> Result<()> {
    for (chunk, outcome) in &result.done {
        if chunk_table::finish_verify(control, &chunk.claim, worker, outcome).await? {
            on_done(&chunk.claim.table_name, outcome.rows_old.max(0) as u64);
        }
    }
    for (chunk, why) in &result.differ {
        tracing::warn!(table = %chunk.claim.table_name, chunk = chunk.claim.chunk_no, "Chunk {why}.");
        chunk_table::back_to_copied(control, &chunk.claim, worker, why, true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::block_range_predicates;

    #[test]
    fn block_ranges_cover_the_heap_once_with_open_ends() {
        assert_eq!(block_range_predicates(0, 4), ["true"]);
        assert_eq!(block_range_predicates(1000, 1), ["true"]);
        assert_eq!(block_range_predicates(1, 3), ["true"]);
        assert_eq!(
            block_range_predicates(10, 3),
            [
                "ctid < '(3,0)'::tid",
                "ctid >= '(3,0)'::tid AND ctid < '(6,0)'::tid",
                "ctid >= '(6,0)'::tid",
            ]
        );
        assert_eq!(
            block_range_predicates(2, 4),
            ["ctid < '(1,0)'::tid", "ctid >= '(1,0)'::tid"]
        );
    }
}
