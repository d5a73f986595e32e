//! `replay` from Kafka: the reconcilers form one consumer group on the retry topic, so
//! several of them share its partitions. A batch is applied (re-syncs committed on the new
//! database) before its offsets are committed, by hand, never automatically: a reconciler
//! that dies in between leaves the batch to be delivered again, and applying a re-sync
//! order twice is harmless. A record that cannot be applied after `max_attempts` goes to
//! the dead-letter topic with the reason in a header, then its offset is committed.
//!
//! A record is applied only once its origin transaction has ended on its primary: the proxy
//! confirms a record before it sends COMMIT to the primary, so a record can be read while
//! its rows are still invisible there, and a re-sync then would delete them on the
//! secondary. Records of a running origin are held (with their partition's offset) and
//! looked up again after a growing pause; records of a rolled-back origin are dropped. See
//! [`held`] for the offset rule and [`crate::origin`] for the lookup.
//!
//! The primary is the one of the record's direction (its origin says): old for old-to-new,
//! new for new-to-old (the cutover's `writes-new` phase). A new-to-old record waits for its
//! transaction on new and re-syncs its rows from new into old.

mod fetch;
mod held;
mod lag;

use crate::apply::{Applier, Outcome, Pending};
use crate::config::ReconcilerConfig;
use crate::replay::{ReplayOptions, ReplayReport};
use anyhow::{Context, Result};
use fetch::{assignment, commit, forget_moved, pace, take_batch};
use held::{Backlog, Taken};
use lag::{cached_lag, exact_lag, LagContext, Replayer};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use switchyard_core::direction::Direction;
use switchyard_core::retry_kafka::{self, KafkaSettings};

/// How long an empty assignment may last in a draining run before it stops (another
/// member of the group holds every partition).
const UNASSIGNED_GIVE_UP: Duration = Duration::from_secs(90);
/// How often a following run resolves in-doubt commits and drains the embedded table.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// Longest pause between attempts at a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the first message of a batch is waited for when nothing else is due.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How often a record held for a running origin is reported (warning), once it has
/// waited that long.
const WAIT_WARNING_EVERY: Duration = Duration::from_secs(30);
/// How long a draining run waits for running origins when nothing else is left; then it
/// stops, leaving those records (and their partitions' offsets) for a later run.
const DRAIN_ORIGIN_GIVE_UP: Duration = Duration::from_secs(60);

/// Drains (or with `follow`, keeps consuming) the Kafka retry topic.
pub async fn run(
    cfg: &ReconcilerConfig,
    opts: &ReplayOptions,
    mut on_progress: impl FnMut(&ReplayReport),
) -> Result<ReplayReport> {
    let started = Instant::now();
    let settings = &cfg.retry_log.kafka;
    retry_kafka::ensure_topics(settings, Duration::from_secs(10))
        .await
        .with_context(|| format!("checking the retry topics on {}", settings.brokers))?;
    let consumer: Replayer = settings
        .consumer_config()
        .set("max.poll.interval.ms", "120000")
        .set("statistics.interval.ms", "1000")
        .create_with_context(LagContext {
            topic: settings.topic.clone(),
            lags: Mutex::new(BTreeMap::new()),
        })
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&settings.topic])
        .with_context(|| format!("subscribing to {}", settings.topic))?;
    let dead_letters: FutureProducer = settings
        .producer_config()
        .create()
        .context("creating the dead-letter producer")?;
    let mut appliers = Appliers {
        forward: Applier::connect(cfg).await?,
        reverse: None,
    };
    let mut report = ReplayReport::default();
    // Statement records and the proxy's fallbacks are in the embedded table.
    embedded_pass(cfg, opts, &mut report).await;
    let mut held = Backlog::default();
    let mut paused: BTreeSet<i32> = BTreeSet::new();
    let mut last_housekeeping = Instant::now();
    let mut unassigned_since = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_moved = Instant::now();
    let mut last_wait_warning: Option<Instant> = None;
    loop {
        let first_wait = held.next_due().map_or(IDLE_WAIT, |t| {
            t.saturating_duration_since(Instant::now()).min(IDLE_WAIT)
        });
        let t_take = Instant::now();
        let batch = take_batch(&consumer, opts.batch as usize, first_wait).await?;
        let taken = t_take.elapsed();
        let got = batch.len();
        let assigned = assignment(&consumer);
        if assigned.as_ref().is_some_and(|a| !a.is_empty()) {
            unassigned_since = Instant::now();
        }
        if let Some(a) = &assigned {
            forget_moved(&consumer, settings, a, &mut held, &mut paused);
        }
        report.records_without_xid += held.add(batch);
        if held.is_empty() {
            // Nothing waits any more: no partition may stay paused.
            pace(&consumer, settings, &held, &mut paused, opts.batch as usize);
            if opts.follow {
                if last_housekeeping.elapsed() > HOUSEKEEPING_EVERY {
                    last_housekeeping = Instant::now();
                    resolve_in_doubt(cfg).await;
                    embedded_pass(cfg, opts, &mut report).await;
                }
                report.partitions = exact_lag(&consumer, &settings.topic);
                report.oldest_age_secs = 0.0;
                report.waiting_for_origin = 0;
                report.seconds = started.elapsed().as_secs_f64();
                on_progress(&report);
                continue;
            }
            if assigned.is_none_or(|a| a.is_empty()) {
                if unassigned_since.elapsed() > UNASSIGNED_GIVE_UP {
                    tracing::info!("No partition assigned to this reconciler; stopping.");
                    break;
                }
                continue;
            }
            let lags = exact_lag(&consumer, &settings.topic);
            if lags.iter().all(|p| p.lag == 0) {
                report.partitions = lags;
                break;
            }
            continue;
        }
        report.oldest_age_secs = held
            .oldest_created_ms()
            .map(|ms| (now_ms() - ms).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        let t0 = Instant::now();
        let (applied, dropped) = step(
            &mut appliers,
            cfg,
            opts,
            &dead_letters,
            settings,
            &mut held,
            &mut report,
        )
        .await?;
        if applied > 0 {
            // Applied but offsets not yet committed: the crash the at-least-once test needs.
            crate::failpoint::abort_at("replay-after-apply");
        }
        let next = held.committable();
        if !next.is_empty() {
            commit(&consumer, settings, &next)?;
        }
        pace(&consumer, settings, &held, &mut paused, opts.batch as usize);
        report.waiting_for_origin = held.waiting() as u64;
        if got > 0 || applied > 0 || dropped > 0 {
            last_moved = Instant::now();
            report.busy_seconds += taken.as_secs_f64() + t0.elapsed().as_secs_f64();
            tracing::debug!(
                taken = got,
                applied,
                dropped,
                ms = t0.elapsed().as_millis() as u64,
                "Replayed a batch."
            );
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = Instant::now();
            report.partitions = cached_lag(&consumer);
            report.seconds = started.elapsed().as_secs_f64();
            on_progress(&report);
        }
        if got == 0 && opts.follow && last_housekeeping.elapsed() > HOUSEKEEPING_EVERY {
            last_housekeeping = Instant::now();
            resolve_in_doubt(cfg).await;
            embedded_pass(cfg, opts, &mut report).await;
        }
        if let Some(w) = held.longest_wait(Instant::now()) {
            if w.waited >= WAIT_WARNING_EVERY
                && last_wait_warning.is_none_or(|t| t.elapsed() >= WAIT_WARNING_EVERY)
            {
                last_wait_warning = Some(Instant::now());
                tracing::warn!(
                    xid = %w.xid,
                    direction = %w.direction,
                    partition = w.partition,
                    offset = w.offset,
                    waited_secs = w.waited.as_secs(),
                    waiting = report.waiting_for_origin,
                    "A retry record waits for its origin transaction to end on the {} database; its partition's offset is held back. That session: SELECT pid, state, xact_start, query FROM pg_stat_activity WHERE backend_xid = xid('{}'::xid8)",
                    w.direction.primary(),
                    w.xid
                );
            }
            if !opts.follow && held.only_waiting() && last_moved.elapsed() > DRAIN_ORIGIN_GIVE_UP {
                tracing::warn!(
                    xid = %w.xid,
                    waiting = report.waiting_for_origin,
                    "Stopping with records whose origin transactions are still running on their primary; a later run replays them."
                );
                report.partitions = exact_lag(&consumer, &settings.topic);
                break;
            }
        }
    }
    report.oldest_age_secs = 0.0;
    report.waiting_for_origin = held.waiting() as u64;
    report.backlog = report.partitions.iter().map(|p| p.lag).sum();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One applier per direction; new-to-old's is connected when its first record comes (it
/// writes into old, which a run with no such record must not need the right to).
struct Appliers {
    forward: Applier,
    reverse: Option<Applier>,
}

impl Appliers {
    /// `direction`'s applier, connected (again) if it is not healthy. The first connection
    /// of new-to-old's fails the run as the forward one's does (a role that may not write
    /// into old is refused with the fix).
    async fn get(&mut self, cfg: &ReconcilerConfig, direction: Direction) -> Result<&mut Applier> {
        if direction == Direction::NewToOld && self.reverse.is_none() {
            self.reverse = Some(Applier::connect_dir(cfg, direction).await?);
        }
        let slot = match (direction, &mut self.reverse) {
            (Direction::NewToOld, Some(a)) => a,
            _ => &mut self.forward,
        };
        if !slot.is_healthy() {
            *slot = reconnect(cfg, direction).await;
        }
        Ok(slot)
    }
}

/// Looks up the origins that are due, then applies the records that are ready, each
/// direction by its own applier. Returns how many records were applied (or
/// dead-lettered) and how many dropped.
async fn step(
    appliers: &mut Appliers,
    cfg: &ReconcilerConfig,
    opts: &ReplayOptions,
    dead_letters: &FutureProducer,
    settings: &KafkaSettings,
    held: &mut Backlog,
    report: &mut ReplayReport,
) -> Result<(usize, u64)> {
    let now = Instant::now();
    let mut dropped = 0;
    for d in Direction::BOTH {
        let due = held.due(now, d);
        if due.is_empty() {
            continue;
        }
        let applier = appliers.get(cfg, d).await?;
        match crate::origin::statuses(applier.source(), &due).await {
            Ok(s) => {
                let n = held.resolve(d, &s, Instant::now());
                report.direction(d).records_dropped_aborted += n;
                report.records_dropped_aborted += n;
                dropped += n;
            }
            Err(e) => {
                tracing::warn!(error = %e, direction = %d, "Looking up origin transactions failed; trying again.");
                held.postpone(Instant::now() + held::LONGEST_RECHECK);
            }
        }
    }
    let ready = held.ready();
    if ready.is_empty() {
        return Ok((0, dropped));
    }
    let n = ready.len();
    for d in Direction::BOTH {
        let batch: Vec<&Taken> = ready.iter().copied().filter(|t| t.direction == d).collect();
        if batch.is_empty() {
            continue;
        }
        let mut sub = ReplayReport::default();
        let applier = appliers.get(cfg, d).await?;
        let applied =
            apply_batch(applier, cfg, opts, dead_letters, settings, &batch, &mut sub).await;
        report.add_direction(d, &sub);
        applied?;
    }
    held.finish_ready();
    Ok((n, dropped))
}

/// Applies a batch until every record is applied or dead-lettered. Trouble reaching the
/// databases is waited out without counting attempts; a record that fails while they are
/// reachable counts one.
async fn apply_batch(
    applier: &mut Applier,
    cfg: &ReconcilerConfig,
    opts: &ReplayOptions,
    dead_letters: &FutureProducer,
    settings: &KafkaSettings,
    batch: &[&Taken],
    report: &mut ReplayReport,
) -> Result<()> {
    let mut todo: Vec<usize> = Vec::new();
    for (i, t) in batch.iter().enumerate() {
        match &t.record {
            Ok(_) => todo.push(i),
            Err(reason) => {
                dead_letter(dead_letters, settings, t, reason).await?;
                report.records_dead += 1;
            }
        }
    }
    let mut attempts = 0;
    while !todo.is_empty() {
        if !applier.is_healthy() {
            *applier = reconnect(cfg, applier.direction()).await;
        }
        let items: Vec<Pending> = todo
            .iter()
            .filter_map(|&i| batch[i].record.as_ref().ok().cloned())
            .collect();
        let outcomes = applier.apply(&items, report).await;
        let mut again = Vec::new();
        for (&i, outcome) in todo.iter().zip(outcomes) {
            match outcome {
                Outcome::Done => report.records_done += 1,
                Outcome::Poison(reason) => {
                    dead_letter(dead_letters, settings, batch[i], &reason).await?;
                    report.records_dead += 1;
                }
                Outcome::Failed(reason) => again.push((i, reason)),
            }
        }
        if again.is_empty() {
            break;
        }
        if applier.is_healthy() {
            attempts += 1;
        }
        report.records_failed += again.len() as u64;
        if attempts >= opts.max_attempts {
            for (i, reason) in &again {
                dead_letter(dead_letters, settings, batch[*i], reason).await?;
                report.records_dead += 1;
            }
            break;
        }
        let pause = Duration::from_secs(1u64 << attempts.clamp(0, 5) as u32).min(MAX_BACKOFF);
        tracing::warn!(
            records = again.len(),
            attempt = attempts,
            error = %again[0].1,
            "Replay failed; trying again in {pause:?}."
        );
        tokio::time::sleep(pause).await;
        todo = again.into_iter().map(|(i, _)| i).collect();
    }
    Ok(())
}

async fn reconnect(cfg: &ReconcilerConfig, direction: Direction) -> Applier {
    let mut pause = Duration::from_millis(500);
    loop {
        match Applier::connect_dir(cfg, direction).await {
            Ok(a) => return a,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Reconnecting to the databases.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn dead_letter(
    producer: &FutureProducer,
    settings: &KafkaSettings,
    t: &Taken,
    reason: &str,
) -> Result<()> {
    tracing::error!(
        partition = t.partition,
        offset = t.offset,
        reason,
        "Retry record dead-lettered."
    );
    let source = format!("{}/{}/{}", settings.topic, t.partition, t.offset);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "switchyard-reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "switchyard-source",
            value: Some(&source),
        });
    let mut record = FutureRecord::to(&settings.dead_letter_topic)
        .payload(&t.payload)
        .headers(headers);
    if let Some(k) = &t.key {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| {
            format!(
                "writing to the dead-letter topic {}",
                settings.dead_letter_topic
            )
        })?;
    Ok(())
}

/// Finishes prepared transactions a proxy left behind, in both directions.
async fn resolve_in_doubt(cfg: &ReconcilerConfig) {
    use crate::connect::{connect, Db};
    let (Ok(old), Ok(new)) = (
        connect(Db::Old, &cfg.old).await,
        connect(Db::New, &cfg.new).await,
    ) else {
        return;
    };
    match switchyard_core::recover::resolve_in_doubt_both(&old, &new, Duration::from_secs(2)).await
    {
        Ok(r) => r.log_resolved(),
        Err(e) => tracing::warn!(error = %e, "Resolving in-doubt transactions failed."),
    }
}

/// One drain of the embedded table (statement records, records the proxy put there when
/// the broker did not confirm); its figures are added to the run's.
async fn embedded_pass(cfg: &ReconcilerConfig, opts: &ReplayOptions, report: &mut ReplayReport) {
    let once = ReplayOptions {
        follow: false,
        ..opts.clone()
    };
    match crate::replay::run(cfg, &once).await {
        Ok(r) => report.absorb(&r),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "Draining the embedded retry log failed.")
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
