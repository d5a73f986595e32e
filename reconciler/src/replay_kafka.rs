//! `replay` from Kafka: the reconcilers form one consumer group on the retry topic, so
//! several of them share its partitions. A batch is applied (re-syncs committed on the new
//! database) before its offsets are committed, by hand, never automatically: a reconciler
//! that dies in between leaves the batch to be delivered again, and applying a re-sync
//! order twice is harmless. A record that cannot be applied after `max_attempts` goes to
//! the dead-letter topic with the reason in a header, then its offset is committed.

use crate::apply::{Applier, Outcome, Pending};
use crate::config::ReconcilerConfig;
use crate::replay::{PartitionLag, ReplayOptions, ReplayReport};
use anyhow::{Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use switchyard_core::retry_kafka::{self, KafkaSettings};

/// How long an empty assignment may last in a draining run before it stops (another
/// member of the group holds every partition).
const UNASSIGNED_GIVE_UP: Duration = Duration::from_secs(90);
/// How often a following run resolves in-doubt commits and drains the embedded table.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// Longest pause between attempts at a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One record taken from the topic.
struct Taken {
    partition: i32,
    offset: i64,
    /// Milliseconds since the epoch, from the message timestamp.
    created_ms: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    record: Result<Pending, String>,
}

impl Taken {
    fn from_message(m: &BorrowedMessage<'_>) -> Taken {
        let payload = m.payload().unwrap_or_default().to_vec();
        let record = retry_kafka::decode(&payload)
            .map(Pending::from)
            .map_err(|e| format!("not a retry record: {e}"));
        Taken {
            partition: m.partition(),
            offset: m.offset(),
            created_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            record,
        }
    }
}

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
    let mut applier = Applier::connect(cfg).await?;
    let mut report = ReplayReport::default();
    // Statement records and the proxy's fallbacks are in the embedded table.
    embedded_pass(cfg, opts, &mut report).await;
    let mut last_housekeeping = Instant::now();
    let mut unassigned_since = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let t_take = Instant::now();
        let batch = take_batch(&consumer, opts.batch as usize).await?;
        let taken = t_take.elapsed();
        if batch.is_empty() {
            let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            if assigned > 0 {
                unassigned_since = Instant::now();
            }
            if opts.follow {
                if last_housekeeping.elapsed() > HOUSEKEEPING_EVERY {
                    last_housekeeping = Instant::now();
                    resolve_in_doubt(cfg, &applier).await;
                    embedded_pass(cfg, opts, &mut report).await;
                }
                report.partitions = exact_lag(&consumer, &settings.topic);
                report.oldest_age_secs = 0.0;
                report.seconds = started.elapsed().as_secs_f64();
                on_progress(&report);
                continue;
            }
            if assigned == 0 {
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
        report.oldest_age_secs = batch
            .iter()
            .filter_map(|t| t.created_ms)
            .min()
            .map(|ms| (now_ms() - ms).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        let t0 = Instant::now();
        apply_batch(
            &mut applier,
            cfg,
            opts,
            &dead_letters,
            settings,
            &batch,
            &mut report,
        )
        .await?;
        let applied = t0.elapsed();
        failpoint("replay-after-apply");
        commit(&consumer, settings, &batch)?;
        report.busy_seconds += taken.as_secs_f64() + t0.elapsed().as_secs_f64();
        tracing::debug!(
            records = batch.len(),
            apply_ms = applied.as_millis() as u64,
            commit_ms = (t0.elapsed() - applied).as_millis() as u64,
            "Replayed a batch."
        );
        if last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = Instant::now();
            report.partitions = cached_lag(&consumer);
            report.seconds = started.elapsed().as_secs_f64();
            on_progress(&report);
        }
    }
    report.oldest_age_secs = 0.0;
    report.backlog = report.partitions.iter().map(|p| p.lag).sum();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Up to `max` messages: waits a little for the first, then takes what is already there.
async fn take_batch(consumer: &Replayer, max: usize) -> Result<Vec<Taken>> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut wait = Duration::from_millis(500);
    while out.len() < max {
        match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(m)) => out.push(Taken::from_message(&m)),
            Ok(Err(e)) => {
                // Broker trouble is reported and waited out; librdkafka reconnects.
                tracing::warn!(error = %e, "Reading the retry topic failed.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
        wait = Duration::from_millis(20);
    }
    tracing::trace!(
        records = out.len(),
        ms = t0.elapsed().as_millis() as u64,
        "Took a batch."
    );
    Ok(out)
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
    batch: &[Taken],
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
            *applier = reconnect(cfg).await;
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
                    dead_letter(dead_letters, settings, &batch[i], &reason).await?;
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
                dead_letter(dead_letters, settings, &batch[*i], reason).await?;
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

async fn reconnect(cfg: &ReconcilerConfig) -> Applier {
    let mut pause = Duration::from_millis(500);
    loop {
        match Applier::connect(cfg).await {
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

/// Commits, per partition, the offset after the batch's last message. A commit refused
/// because the partition moved to another member is fine: that member replays the batch.
fn commit(consumer: &Replayer, settings: &KafkaSettings, batch: &[Taken]) -> Result<()> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for t in batch {
        let e = next.entry(t.partition).or_insert(t.offset + 1);
        *e = (*e).max(t.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next {
        tpl.add_partition_offset(&settings.topic, p, Offset::Offset(o))
            .context("building the offset list")?;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(error = %e, "Committing offsets failed; the batch will be replayed (harmless).");
    }
    Ok(())
}

/// Lag per assigned partition, exactly: the broker's high watermark minus the committed
/// offset. Network round trips per partition, so only when idle (is the backlog drained?).
fn exact_lag(consumer: &Replayer, topic: &str) -> Vec<PartitionLag> {
    tokio::task::block_in_place(|| {
        let Ok(assigned) = consumer.assignment() else {
            return Vec::new();
        };
        let committed = consumer
            .committed_offsets(assigned.clone(), Duration::from_secs(5))
            .unwrap_or(assigned);
        let mut out = Vec::new();
        for e in committed.elements_for_topic(topic) {
            let Ok((low, high)) =
                consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(5))
            else {
                continue;
            };
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            out.push(PartitionLag {
                partition: e.partition(),
                lag: (high - at).max(0),
            });
        }
        out
    })
}

/// Lag per assigned partition from librdkafka's statistics (refreshed every second from
/// its fetches): no round trip, for progress while replaying.
fn cached_lag(consumer: &Replayer) -> Vec<PartitionLag> {
    let assigned: Vec<i32> = consumer
        .assignment()
        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default();
    let cached: Option<Vec<PartitionLag>> = {
        let Ok(lags) = consumer.context().lags.lock() else {
            return Vec::new();
        };
        assigned
            .into_iter()
            .map(|p| {
                lags.get(&p).map(|&lag| PartitionLag {
                    partition: p,
                    lag: lag.max(0),
                })
            })
            .collect()
    };
    // A partition just assigned has no figure yet: ask the broker rather than report a
    // partial (and so falsely drained) picture.
    cached.unwrap_or_else(|| exact_lag(consumer, &consumer.context().topic))
}

/// The consumer, with a context that keeps librdkafka's per-partition lag figures.
type Replayer = StreamConsumer<LagContext>;

struct LagContext {
    topic: String,
    lags: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let Some(t) = stats.topics.get(&self.topic) else {
            return;
        };
        if let Ok(mut lags) = self.lags.lock() {
            // Only the latest figures: a partition that moved away must not keep its last.
            lags.clear();
            for (&p, part) in &t.partitions {
                // -1 means "not known yet" (nothing fetched or committed).
                if p >= 0 && part.consumer_lag >= 0 {
                    lags.insert(p, part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

async fn resolve_in_doubt(cfg: &ReconcilerConfig, applier: &Applier) {
    let Ok(old) = crate::connect::connect(crate::connect::Db::Old, &cfg.old).await else {
        return;
    };
    match switchyard_core::recover::resolve_in_doubt(&old, &applier.target, Duration::from_secs(2))
        .await
    {
        Ok(r) if !r.committed.is_empty() || !r.rolled_back.is_empty() => tracing::info!(
            committed = r.committed.len(),
            rolled_back = r.rolled_back.len(),
            "Resolved in-doubt transactions."
        ),
        Ok(_) => {}
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

/// `SWITCHYARD_FAILPOINT=replay-after-apply` stops the process after a batch is applied
/// and before its offsets are committed (tests of at-least-once replay).
fn failpoint(name: &str) {
    if std::env::var("SWITCHYARD_FAILPOINT").as_deref() == Ok(name) {
        eprintln!("switchyard-reconciler: failpoint {name} reached; aborting");
        std::process::abort();
    }
}
