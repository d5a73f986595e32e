//! Records taken from the topic and not yet committed, per partition in offset order.
//!
//! The offset rule lives here: a partition's offset moves past a record only once that
//! record and every one before it in the partition are finished (applied, dead-lettered,
//! or dropped because their origin rolled back). A record waiting for its origin
//! transaction holds back its own partition's offset and nothing else; the records behind
//! it are still applied when their origins committed (re-syncs are order-independent), they
//! just cannot be committed before it.

use crate::apply::Pending;
use crate::origin::XactStatus;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use switchyard_core::retry_kafka;

/// First pause before an origin still in progress is looked up again; it doubles each time
/// up to [`LONGEST_RECHECK`]. Most origins commit within milliseconds of their record.
pub(super) const FIRST_RECHECK: Duration = Duration::from_millis(100);
pub(super) const LONGEST_RECHECK: Duration = Duration::from_secs(1);

/// One record taken from the topic.
pub(super) struct Taken {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, from the message timestamp.
    pub created_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The old database's id of the transaction the record came from.
    pub xid: Option<String>,
    pub record: Result<Pending, String>,
}

impl Taken {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Taken {
        let payload = m.payload().unwrap_or_default().to_vec();
        let (xid, record) = match retry_kafka::decode(&payload) {
            Ok(r) => match r.origin.xid.clone() {
                Some(x) if !crate::origin::is_xid(&x) => (
                    None,
                    Err(format!("origin xid {x:?} is not a transaction id")),
                ),
                xid => (xid, Ok(Pending::from(r))),
            },
            Err(e) => (None, Err(format!("not a retry record: {e}"))),
        };
        Taken {
            partition: m.partition(),
            offset: m.offset(),
            created_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            xid,
            record,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its origin has not been looked up yet.
    New,
    /// Its origin was still running at the last look; looked up again at `next`.
    Waiting {
        since: Instant,
        next: Instant,
        pause: Duration,
    },
    /// To apply: its origin committed, cannot be known any more, or is not named.
    Ready,
    /// Applied, dead-lettered or dropped.
    Finished,
}

struct Held {
    taken: Taken,
    stage: Stage,
}

/// A record waiting for its origin, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Wait {
    pub xid: String,
    pub partition: i32,
    pub offset: i64,
    pub waited: Duration,
}

#[derive(Default)]
pub(super) struct Backlog {
    parts: BTreeMap<i32, VecDeque<Held>>,
    /// No lookups before this (the last one failed).
    not_before: Option<Instant>,
}

impl Backlog {
    /// Adds records in the order they were taken; returns how many name no origin
    /// transaction (they are applied at once: a re-sync order is idempotent).
    pub fn add(&mut self, batch: Vec<Taken>) -> u64 {
        let mut without_xid = 0;
        for t in batch {
            let q = self.parts.entry(t.partition).or_default();
            if q.back().is_some_and(|h| t.offset <= h.taken.offset) {
                // The partition is read again from its committed offset (it went to another
                // member and came back): what is held of it comes again.
                tracing::debug!(
                    partition = t.partition,
                    offset = t.offset,
                    "Partition read again from an earlier offset; forgetting what was held of it."
                );
                q.clear();
            }
            let stage = match (&t.record, &t.xid) {
                (Ok(_), Some(_)) => Stage::New,
                (Ok(_), None) => {
                    without_xid += 1;
                    Stage::Ready
                }
                // Dead-lettered when the ready records are applied.
                (Err(_), _) => Stage::Ready,
            };
            q.push_back(Held { taken: t, stage });
        }
        without_xid
    }

    /// Forgets partitions no longer assigned: their new owner replays them from the
    /// committed offset.
    pub fn retain(&mut self, assigned: &BTreeSet<i32>) {
        self.parts.retain(|p, _| assigned.contains(p));
    }

    pub fn is_empty(&self) -> bool {
        self.parts.values().all(VecDeque::is_empty)
    }

    fn held(&self) -> impl Iterator<Item = &Held> {
        self.parts.values().flatten()
    }

    /// The distinct origins to look up now: those of new records and of waiting ones whose
    /// pause is over.
    pub fn due(&self, now: Instant) -> Vec<String> {
        if self.not_before.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let due: BTreeSet<&String> = self
            .held()
            .filter(|h| match h.stage {
                Stage::New => true,
                Stage::Waiting { next, .. } => next <= now,
                _ => false,
            })
            .filter_map(|h| h.taken.xid.as_ref())
            .collect();
        due.into_iter().cloned().collect()
    }

    /// When the next lookup is due, if any record waits for one.
    pub fn next_due(&self) -> Option<Instant> {
        let next = self
            .held()
            .filter_map(|h| match h.stage {
                Stage::New => Some(Instant::now()),
                Stage::Waiting { next, .. } => Some(next),
                _ => None,
            })
            .min()?;
        Some(self.not_before.map_or(next, |t| t.max(next)))
    }

    /// A lookup failed: the next one waits until `until`.
    pub fn postpone(&mut self, until: Instant) {
        self.not_before = Some(until);
    }

    /// Moves records on by their origin's status: committed (or forgotten, or unknown to
    /// old) → ready, rolled back → finished (dropped), running → waiting, looked up again
    /// after a pause that grows. Returns how many were dropped.
    pub fn resolve(&mut self, status: &HashMap<String, XactStatus>, now: Instant) -> u64 {
        self.not_before = None;
        let mut dropped = 0;
        for h in self.parts.values_mut().flatten() {
            if !matches!(h.stage, Stage::New | Stage::Waiting { .. }) {
                continue;
            }
            let Some(xid) = h.taken.xid.as_deref() else {
                continue;
            };
            let Some(&s) = status.get(xid) else {
                continue;
            };
            h.stage = match (s, h.stage) {
                (XactStatus::Committed | XactStatus::Forgotten, _) => Stage::Ready,
                (XactStatus::Unknown, _) => {
                    tracing::warn!(
                        xid,
                        partition = h.taken.partition,
                        offset = h.taken.offset,
                        "The old database never started this record's origin transaction (restored or replaced?); re-syncing from it anyway."
                    );
                    Stage::Ready
                }
                (XactStatus::Aborted, _) => {
                    tracing::debug!(
                        xid,
                        partition = h.taken.partition,
                        offset = h.taken.offset,
                        "Origin transaction rolled back on the old database; record dropped."
                    );
                    dropped += 1;
                    Stage::Finished
                }
                (XactStatus::InProgress, Stage::Waiting { since, next, pause }) => {
                    if next > now {
                        // Looked up early for another record of the same origin.
                        continue;
                    }
                    tracing::debug!(
                        xid,
                        partition = h.taken.partition,
                        offset = h.taken.offset,
                        waited_ms = now.duration_since(since).as_millis() as u64,
                        "Origin transaction still in progress; record held."
                    );
                    let pause = (pause * 2).min(LONGEST_RECHECK);
                    Stage::Waiting {
                        since,
                        next: now + pause,
                        pause,
                    }
                }
                (XactStatus::InProgress, _) => {
                    tracing::debug!(
                        xid,
                        partition = h.taken.partition,
                        offset = h.taken.offset,
                        "Origin transaction in progress; record held until it ends."
                    );
                    Stage::Waiting {
                        since: now,
                        next: now + FIRST_RECHECK,
                        pause: FIRST_RECHECK,
                    }
                }
            };
        }
        dropped
    }

    /// The records to apply now, by partition and offset.
    pub fn ready(&self) -> Vec<&Taken> {
        self.held()
            .filter(|h| h.stage == Stage::Ready)
            .map(|h| &h.taken)
            .collect()
    }

    /// The ready records were applied or dead-lettered.
    pub fn finish_ready(&mut self) {
        for h in self.parts.values_mut().flatten() {
            if h.stage == Stage::Ready {
                h.stage = Stage::Finished;
            }
        }
    }

    /// Takes the finished records off the front of each partition; for each partition that
    /// moved, the offset to commit (the first one not finished).
    pub fn committable(&mut self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (&p, q) in &mut self.parts {
            while q.front().is_some_and(|h| h.stage == Stage::Finished) {
                if let Some(h) = q.pop_front() {
                    out.insert(p, h.taken.offset + 1);
                }
            }
        }
        out
    }

    /// Records waiting for their origin.
    pub fn waiting(&self) -> usize {
        self.held()
            .filter(|h| matches!(h.stage, Stage::Waiting { .. }))
            .count()
    }

    /// True when every record held waits for its origin (nothing else to do).
    pub fn only_waiting(&self) -> bool {
        self.held()
            .all(|h| matches!(h.stage, Stage::Waiting { .. } | Stage::Finished))
    }

    /// Partitions with a record waiting for its origin and at least `limit` records held:
    /// fetching them stops until the origin ends, so what is held stays bounded.
    pub fn to_pause(&self, limit: usize) -> BTreeSet<i32> {
        self.parts
            .iter()
            .filter(|(_, q)| {
                q.len() >= limit.max(1)
                    && q.iter().any(|h| matches!(h.stage, Stage::Waiting { .. }))
            })
            .map(|(&p, _)| p)
            .collect()
    }

    /// The record that has waited longest for its origin.
    pub fn longest_wait(&self, now: Instant) -> Option<Wait> {
        self.held()
            .filter_map(|h| match h.stage {
                Stage::Waiting { since, .. } => Some((since, h)),
                _ => None,
            })
            .min_by_key(|(since, _)| *since)
            .map(|(since, h)| Wait {
                xid: h.taken.xid.clone().unwrap_or_default(),
                partition: h.taken.partition,
                offset: h.taken.offset,
                waited: now.saturating_duration_since(since),
            })
    }

    /// Creation time of the oldest record not yet finished (ms since the epoch).
    pub fn oldest_created_ms(&self) -> Option<i64> {
        self.held()
            .filter(|h| h.stage != Stage::Finished)
            .filter_map(|h| h.taken.created_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64, xid: Option<&str>) -> Taken {
        Taken {
            partition,
            offset,
            created_ms: Some(offset),
            key: None,
            payload: Vec::new(),
            xid: xid.map(str::to_string),
            record: Ok(Pending {
                kind: "row".into(),
                table: Some("\"public\".\"t\"".into()),
                key: Some(format!("{{\"id\": {offset}}}")),
                statement: None,
                idempotency_key: format!("k{partition}-{offset}"),
            }),
        }
    }

    fn status(pairs: &[(&str, XactStatus)]) -> HashMap<String, XactStatus> {
        pairs.iter().map(|(x, s)| (x.to_string(), *s)).collect()
    }

    fn offsets(ready: Vec<&Taken>) -> Vec<(i32, i64)> {
        ready.iter().map(|t| (t.partition, t.offset)).collect()
    }

    #[test]
    fn a_running_origin_holds_its_partitions_offset_and_nothing_else() {
        let mut b = Backlog::default();
        let now = Instant::now();
        let without = b.add(vec![
            rec(0, 10, Some("100")),
            rec(0, 11, Some("101")),
            rec(0, 12, None),
            rec(1, 5, Some("101")),
        ]);
        assert_eq!(without, 1);
        assert_eq!(b.due(now), vec!["100".to_string(), "101".to_string()]);
        let dropped = b.resolve(
            &status(&[
                ("100", XactStatus::InProgress),
                ("101", XactStatus::Committed),
            ]),
            now,
        );
        assert_eq!(dropped, 0);
        // Behind the waiting record, its partition's others are applied all the same.
        assert_eq!(offsets(b.ready()), vec![(0, 11), (0, 12), (1, 5)]);
        b.finish_ready();
        assert_eq!(b.committable(), BTreeMap::from([(1, 6)]));
        assert_eq!(b.waiting(), 1);
        assert!(b.only_waiting());
        // Once the origin commits, the whole partition can be committed.
        let later = now + FIRST_RECHECK;
        assert_eq!(b.due(later), vec!["100".to_string()]);
        b.resolve(&status(&[("100", XactStatus::Committed)]), later);
        assert_eq!(offsets(b.ready()), vec![(0, 10)]);
        b.finish_ready();
        assert_eq!(b.committable(), BTreeMap::from([(0, 13)]));
        assert!(b.is_empty());
    }

    #[test]
    fn rolled_back_origins_are_dropped_and_their_offsets_committed() {
        let mut b = Backlog::default();
        let now = Instant::now();
        b.add(vec![rec(2, 0, Some("7")), rec(2, 1, Some("8"))]);
        let dropped = b.resolve(
            &status(&[("7", XactStatus::Aborted), ("8", XactStatus::Forgotten)]),
            now,
        );
        assert_eq!(dropped, 1);
        assert_eq!(offsets(b.ready()), vec![(2, 1)]);
        b.finish_ready();
        assert_eq!(b.committable(), BTreeMap::from([(2, 2)]));
    }

    #[test]
    fn lookups_back_off_from_100_ms_to_1_s() {
        let mut b = Backlog::default();
        let mut now = Instant::now();
        b.add(vec![rec(0, 0, Some("9"))]);
        let running = status(&[("9", XactStatus::InProgress)]);
        let mut pauses = Vec::new();
        for _ in 0..6 {
            assert_eq!(b.due(now).len(), 1);
            b.resolve(&running, now);
            let next = b.next_due().expect("waiting");
            pauses.push(next - now);
            assert!(b.due(now).is_empty(), "not due before its pause is over");
            now = next;
        }
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        let w = b.longest_wait(now).expect("waiting");
        assert_eq!((w.xid.as_str(), w.partition, w.offset), ("9", 0, 0));
        assert_eq!(w.waited.as_millis(), 3500);
    }

    #[test]
    fn a_failed_lookup_postpones_the_next() {
        let mut b = Backlog::default();
        let now = Instant::now();
        b.add(vec![rec(0, 0, Some("9"))]);
        b.postpone(now + LONGEST_RECHECK);
        assert!(b.due(now).is_empty());
        assert_eq!(b.next_due(), Some(now + LONGEST_RECHECK));
        assert_eq!(b.due(now + LONGEST_RECHECK).len(), 1);
    }

    #[test]
    fn a_partition_read_again_or_moved_away_is_forgotten() {
        let mut b = Backlog::default();
        let now = Instant::now();
        b.add(vec![
            rec(0, 4, Some("1")),
            rec(0, 5, Some("1")),
            rec(1, 0, None),
        ]);
        b.resolve(&status(&[("1", XactStatus::InProgress)]), now);
        // Delivered again from the committed offset after a rebalance.
        b.add(vec![rec(0, 4, Some("1"))]);
        assert_eq!(b.waiting(), 0);
        assert_eq!(b.due(now), vec!["1".to_string()]);
        b.retain(&BTreeSet::from([0]));
        assert!(b.ready().is_empty(), "partition 1 moved away");
    }

    #[test]
    fn waiting_partitions_pause_once_they_hold_enough() {
        let mut b = Backlog::default();
        let now = Instant::now();
        b.add(vec![rec(0, 0, Some("1")), rec(0, 1, None), rec(1, 0, None)]);
        b.resolve(&status(&[("1", XactStatus::InProgress)]), now);
        assert_eq!(b.to_pause(2), BTreeSet::from([0]));
        assert!(b.to_pause(3).is_empty());
        b.finish_ready();
        b.committable();
        assert_eq!(b.to_pause(1), BTreeSet::from([0]));
    }

    #[test]
    fn records_that_are_not_retry_records_go_straight_to_apply() {
        let mut b = Backlog::default();
        let mut bad = rec(0, 0, None);
        bad.record = Err("not a retry record".into());
        assert_eq!(b.add(vec![bad]), 0);
        assert_eq!(b.ready().len(), 1);
    }
}
