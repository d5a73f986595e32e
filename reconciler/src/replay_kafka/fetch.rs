//! The consumer side of replay: taking batches, committing offsets, pausing partitions
//! whose records wait for their origin, and following the assignment.

use super::held::{Backlog, Taken};
use super::lag::Replayer;
use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use switchyard_core::retry_kafka::KafkaSettings;

/// The partitions assigned to this member (None when librdkafka cannot say right now).
pub(super) fn assignment(consumer: &Replayer) -> Option<BTreeSet<i32>> {
    consumer
        .assignment()
        .ok()
        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
}

/// Forgets what is held of partitions that moved to another member (it replays them from
/// their committed offset).
pub(super) fn forget_moved(
    consumer: &Replayer,
    settings: &KafkaSettings,
    assigned: &BTreeSet<i32>,
    held: &mut Backlog,
    paused: &mut BTreeSet<i32>,
) {
    held.retain(assigned);
    let gone: Vec<i32> = paused.difference(assigned).copied().collect();
    if gone.is_empty() {
        return;
    }
    // librdkafka keeps an application's pause across assignments: lift it, or a partition
    // that comes back would never be fetched.
    if let Err(e) = consumer.resume(&partitions(settings, &gone)) {
        tracing::debug!(error = %e, "Resuming partitions that moved away failed.");
    }
    for p in gone {
        paused.remove(&p);
    }
}

/// Stops fetching partitions whose records wait for a running origin (once they hold a
/// batch's worth), and fetches them again when they do not: what is held stays bounded,
/// and the other partitions go on. A paused partition is fetched again from the message
/// after the last one taken.
pub(super) fn pace(
    consumer: &Replayer,
    settings: &KafkaSettings,
    held: &Backlog,
    paused: &mut BTreeSet<i32>,
    limit: usize,
) {
    let want = held.to_pause(limit);
    let stop: Vec<i32> = want.difference(paused).copied().collect();
    let go: Vec<i32> = paused.difference(&want).copied().collect();
    if !stop.is_empty() {
        match consumer.pause(&partitions(settings, &stop)) {
            Ok(()) => {
                tracing::debug!(partitions = ?stop, "Paused partitions waiting for origin transactions.");
                paused.extend(stop);
            }
            Err(e) => tracing::warn!(error = %e, "Pausing partitions failed."),
        }
    }
    if !go.is_empty() {
        match consumer.resume(&partitions(settings, &go)) {
            Ok(()) => {
                tracing::debug!(partitions = ?go, "Resumed partitions.");
                for p in go {
                    paused.remove(&p);
                }
            }
            Err(e) => tracing::warn!(error = %e, "Resuming partitions failed."),
        }
    }
}

fn partitions(settings: &KafkaSettings, ps: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &p in ps {
        tpl.add_partition(&settings.topic, p);
    }
    tpl
}

/// Up to `max` messages: waits up to `first_wait` for the first, then takes what is
/// already there.
pub(super) async fn take_batch(
    consumer: &Replayer,
    max: usize,
    first_wait: Duration,
) -> Result<Vec<Taken>> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut wait = first_wait;
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

/// Commits, per partition, the given next offset. A commit refused because the partition
/// moved to another member is fine: that member replays from the last committed offset.
pub(super) fn commit(
    consumer: &Replayer,
    settings: &KafkaSettings,
    next: &BTreeMap<i32, i64>,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in next {
        tpl.add_partition_offset(&settings.topic, p, Offset::Offset(o))
            .context("building the offset list")?;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(error = %e, "Committing offsets failed; those records will be replayed (harmless).");
    }
    Ok(())
}
