//! The shadow workers: a dispatcher takes jobs off the queue only while a concurrency slot
//! is free (so the queue, not the pool, absorbs bursts), runs each on both sides at the
//! same moment, compares, and schedules the re-check of a mismatch.

use super::analyze::Shape;
use super::collation;
use super::digest::{compare, differing_rows, signature, Difference, Digest};
use super::error::SideError;
use super::exec::{Limits, Pool, Statement};
use super::job::Job;
use super::sample::Kind;
use super::samples::{side_view, MismatchSample};
use super::stats::Outcome;
use super::Shadow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub(super) async fn dispatch(
    shadow: Arc<Shadow>,
    mut rx: mpsc::Receiver<Job>,
    mut recheck_rx: mpsc::Receiver<Job>,
) {
    let slots = Arc::new(Semaphore::new(shadow.config.concurrency));
    let pace = match shadow.config.max_comparisons_per_sec {
        0 => None,
        n => Some(Duration::from_secs(1) / n.min(1_000_000) as u32),
    };
    let mut next_start = tokio::time::Instant::now();
    // Owned here so aborting the dispatcher at shutdown aborts the comparisons in flight.
    let mut running = JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        if let Some(gap) = pace {
            // Starts are spaced evenly; time spent idle is not saved up for a burst.
            let now = tokio::time::Instant::now();
            if next_start > now {
                tokio::time::sleep_until(next_start).await;
            }
            next_start = next_start.max(now) + gap;
        }
        while running.try_join_next().is_some() {}
        let job = tokio::select! {
            biased;
            Some(j) = recheck_rx.recv() => j,
            Some(j) = rx.recv() => j,
            else => break,
        };
        shadow.stats.popped.fetch_add(1, Ordering::Relaxed);
        running.spawn(run_job(shadow.clone(), job, permit));
    }
    while running.join_next().await.is_some() {}
}

async fn run_job(shadow: Arc<Shadow>, job: Job, _slot: OwnedSemaphorePermit) {
    let recheck = job.attempt > 0;
    let analysis = shadow.analysis(&job.sql);
    let (fp, kind, query) = (job.fingerprint, job.kind, analysis.normalized.as_str());
    // Every sampled statement ends in exactly one outcome: matched, transient, confirmed,
    // error or skipped.
    if !recheck {
        shadow.stats.sampled(fp, kind, query);
    }
    let outcome = match &analysis.verdict {
        Err(skip) => Some(Outcome::Skipped(skip.as_str())),
        Ok(shape) => compare_once(&shadow, &job, shape, query).await,
    };
    if recheck {
        shadow.stats.recheck_finished();
    }
    if let Some(o) = outcome {
        shadow.stats.outcome(fp, kind, query, o);
    }
}

/// Runs and compares; None when a re-check was scheduled (the outcome comes later).
async fn compare_once(
    shadow: &Arc<Shadow>,
    job: &Job,
    shape: &Shape,
    query: &str,
) -> Option<Outcome> {
    let recheck = job.attempt > 0;
    let (a_pool, b_pool, b_label) = match job.kind {
        Kind::Shadow => (&shadow.old, &shadow.new, "new"),
        Kind::Baseline => (&shadow.old, &shadow.old_again, "old"),
    };
    let limits = Limits {
        statement_timeout: shadow.config.statement_timeout(),
        max_message_size: shadow.max_message_size,
        max_kept: shadow.config.max_tracked_rows,
        // Values are only needed to show a confirmed mismatch, which only a re-check can be.
        keep_values: recheck,
    };
    let (a, b) = tokio::join!(
        side(a_pool, job, shape, limits),
        side(b_pool, job, shape, limits)
    );
    let (a, a_time) = a;
    let (b, b_time) = b;
    shadow.stats.latency(job.fingerprint, query, "old", a_time);
    if job.kind == Kind::Shadow {
        shadow
            .stats
            .latency(job.fingerprint, query, b_label, b_time);
    }
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let errs = [a.err(), b.err()];
            let errs: Vec<&SideError> = errs.iter().flatten().collect();
            if errs.iter().any(|e| e.is_write_attempt()) {
                return Some(Outcome::Skipped("read_only_violation"));
            }
            let first = errs.first().map_or("unknown", |e| e.kind());
            if let Some(e) = errs.first() {
                tracing::debug!(fingerprint = %format!("{:016x}", job.fingerprint), error = %e, "Shadow read failed.");
            }
            return Some(Outcome::Error(first));
        }
    };
    if let Some(reason) = a.order_unchecked {
        if !recheck {
            shadow
                .stats
                .order_unchecked(job.fingerprint, query, reason.as_str());
        }
    }
    match (compare(&a, &b), recheck) {
        (None, false) => Some(Outcome::Matched),
        (None, true) => Some(Outcome::Transient),
        (Some(_), false) => {
            schedule_recheck(shadow, job, signature(&a, &b));
            None
        }
        (Some(diff), true) if job.first_mismatch == Some(signature(&a, &b)) => {
            let (diff, collations) = if diff == Difference::Collation {
                collation::explain((a_pool, b_pool), (&a, &b), limits).await
            } else {
                (diff, Default::default())
            };
            // Only old against new can be accepted: a baseline that sorts differently is
            // a statement whose order is not stable, worth seeing whatever the setting.
            if diff == Difference::Collation
                && job.kind == Kind::Shadow
                && shadow.accepts_collation(job.fingerprint)
            {
                return Some(Outcome::Accepted(diff.as_str()));
            }
            confirm(shadow, job, query, diff, (&a, &b), collations);
            Some(Outcome::Confirmed(diff.as_str()))
        }
        // Still different, but not in the same way: data in motion.
        (Some(_), true) => Some(Outcome::Transient),
    }
}

async fn side(
    pool: &Pool,
    job: &Job,
    shape: &Shape,
    limits: Limits,
) -> (Result<Digest, SideError>, std::time::Duration) {
    let started = Instant::now();
    let stmt = Statement {
        sql: &job.sql,
        param_types: &job.param_types,
        param_formats: &job.param_formats,
        params: &job.params,
        settings: &job.settings,
    };
    let result = async {
        let (mut conn, reused) = pool.get().await?;
        let mut r = conn.run(pool.role(), &stmt, shape, limits).await;
        if reused && r.as_ref().is_err_and(SideError::is_dead_connection) {
            conn = pool.connect().await?;
            r = conn.run(pool.role(), &stmt, shape, limits).await;
        }
        match &r {
            Err(e) if e.poisons_connection() => {}
            _ => pool.put(conn),
        }
        r
    }
    .await;
    (result, started.elapsed())
}

/// Queues the same statement again after the re-check delay, on the bounded re-check queue
/// (served before new samples); if that is full it is dropped and counted, never waited for.
fn schedule_recheck(shadow: &Arc<Shadow>, job: &Job, signature: u64) {
    let mut again = job.clone();
    again.attempt = 1;
    again.first_mismatch = Some(signature);
    shadow.stats.recheck_started();
    let shadow = shadow.clone();
    let delay = shadow.config.recheck_delay();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        // Counted as pushed like any job, so pushed and popped meet when the queue is empty.
        if shadow.recheck_tx.try_send(again).is_ok() {
            shadow.stats.pushed.fetch_add(1, Ordering::Relaxed);
        } else {
            shadow
                .stats
                .rechecks_dropped
                .fetch_add(1, Ordering::Relaxed);
            shadow.stats.recheck_finished();
        }
    });
}

/// Records a confirmed mismatch: one sample in the ring, one log line. `collations`: each
/// side's text sort collations, for a collation difference.
fn confirm(
    shadow: &Shadow,
    job: &Job,
    query: &str,
    diff: Difference,
    (a, b): (&Digest, &Digest),
    collations: (Vec<String>, Vec<String>),
) {
    let (only_a, only_b) = differing_rows(a, b, shadow.config.sample_rows);
    let rows_listed = (a.kept.len() as u64) == a.rows && (b.kept.len() as u64) == b.rows;
    let fingerprint = format!("{:016x}", job.fingerprint);
    tracing::warn!(
        %fingerprint,
        kind = job.kind.as_str(),
        difference = diff.as_str(),
        old_rows = a.rows,
        other_rows = b.rows,
        query,
        "Shadow read mismatch confirmed after a re-check."
    );
    // Same rows in another order name no differing row: show both orders instead.
    let first = match diff {
        Difference::Order | Difference::Collation => shadow.config.sample_rows,
        _ => 0,
    };
    let mut old = side_view(a, &only_a, first, &shadow.redactor);
    let mut other = side_view(b, &only_b, first, &shadow.redactor);
    (old.sort_collations, other.sort_collations) = collations;
    let at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    shadow.samples.push(MismatchSample {
        at_unix_ms,
        fingerprint,
        kind: job.kind.as_str(),
        query: query.to_string(),
        difference: diff.as_str(),
        old,
        other,
        redacted: shadow.redactor.redacts(),
        rows_listed,
    });
}
