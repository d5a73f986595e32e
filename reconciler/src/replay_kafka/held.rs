//! Records taken from the topic and not yet committed, per partition in offset order.
//!
//! The offset rule lives here: a partition's offset moves past a record only once that
//! record and every one before it in the partition are finished (applied, dead-lettered,
//! or dropped because their origin rolled back). A record waiting for its origin
//! transaction holds back its own partition's offset and nothing else; the records behind
//! it are still applied when their origins committed (re-syncs are order-independent), they
//! just cannot be committed before it.
//!
//! An origin is a transaction of its record's direction's primary (old for old-to-new, new
//! for new-to-old): the two databases hand out transaction ids independently, so origins
//! are looked up and resolved one direction at a time.

use crate::apply::Pending;
use crate::origin::XactStatus;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use switchyard_core::direction::Direction;
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
    /// The id of the transaction the record came from, on its direction's primary.
    pub xid: Option<String>,
    /// Which database the origin transaction ran on and the rows are re-read from
    /// (old-to-new for a record that cannot be read).
    pub direction: Direction,
    pub record: Result<Pending, String>,
}

impl Taken {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Taken {
        let payload = m.payload().unwrap_or_default().to_vec();
        let (xid, direction, record) = match retry_kafka::decode(&payload) {
            Ok(r) => match r.origin.xid.clone() {
                Some(x) if !crate::origin::is_xid(&x) => (
                    None,
                    r.origin.direction,
                    Err(format!("origin xid {x:?} is not a transaction id")),
                ),
                xid => (xid, r.origin.direction, Ok(Pending::from(r))),
            },
            Err(e) => (
                None,
                Direction::OldToNew,
                Err(format!("not a retry record: {e}")),
            ),
        };
        Taken {
            partition: m.partition(),
            offset: m.offset(),
            created_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            xid,
            direction,
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
    pub direction: Direction,
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

    /// The distinct origins of `direction` to look up now: those of new records and of
    /// waiting ones whose pause is over.
    pub fn due(&self, now: Instant, direction: Direction) -> Vec<String> {
        if self.not_before.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let due: BTreeSet<&String> = self
            .held()
            .filter(|h| h.taken.direction == direction)
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

    /// Moves records of `direction` on by their origin's status (as its primary answered):
    /// committed (or forgotten, or unknown to the primary) → ready, rolled back → finished
    /// (dropped), running → waiting, looked up again after a pause that grows. Returns how
    /// many were dropped.
    pub fn resolve(
        &mut self,
        direction: Direction,
        status: &HashMap<String, XactStatus>,
        now: Instant,
    ) -> u64 {
        self.not_before = None;
        let mut dropped = 0;
        let primary = direction.primary();
        for h in self.parts.values_mut().flatten() {
            if h.taken.direction != direction
                || !matches!(h.stage, Stage::New | Stage::Waiting { .. })
            {
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
                        %primary,
                        "The primary never started this record's origin transaction (restored or replaced?); re-syncing from it anyway."
                    );
                    Stage::Ready
                }
                (XactStatus::Aborted, _) => {
                    tracing::debug!(
                        xid,
                        partition = h.taken.partition,
                        offset = h.taken.offset,
                        %primary,
                        "Origin transaction rolled back on its primary; record dropped."
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
                direction: h.taken.direction,
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
#[path = "held_tests.rs"]
mod tests;
