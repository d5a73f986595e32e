//! What a replay run did, for people (`--format json`) and for Prometheus
//! (`--metrics-file`): totals over both directions, and each direction's own counts.

use serde::Serialize;
use std::collections::BTreeMap;
use switchyard_core::direction::Direction;

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub rows_resynced: u64,
    pub tables_repaired: u64,
    pub statements_applied: u64,
    /// Rows of the primary's change log applied (writes no proxy mirrored in lockstep).
    pub change_log_events: u64,
    /// Of those, written by sessions outside every proxy.
    pub writes_outside_proxy: u64,
    pub records_done: u64,
    pub records_failed: u64,
    pub records_dead: u64,
    /// Lockstep mode: intents left behind whose secondary transaction committed (cleared),
    /// and those whose orders went to the retry log and were replayed with it (queued).
    pub intents_cleared: u64,
    pub intents_queued: u64,
    /// Records still waiting in the embedded retry logs (old's and new's).
    pub backlog: i64,
    /// Age of the oldest record still waiting, in seconds (0 when none).
    pub oldest_age_secs: f64,
    pub seconds: f64,
    /// Time spent taking, applying and committing records (the run minus waiting for the
    /// group to form and for new records).
    pub busy_seconds: f64,
    /// The counts of each direction that had anything to replay (`old-to-new`,
    /// `new-to-old`), keyed by its name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub directions: BTreeMap<String, DirectionCounts>,
    /// Kafka only: the consumer lag of each partition assigned to this reconciler.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionLag>,
    /// Kafka only: records still in the embedded tables (statements, fallbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_backlog: Option<i64>,
    /// Kafka only: records dropped because their origin transaction rolled back on its
    /// primary (their changes never happened there).
    pub records_dropped_aborted: u64,
    /// Kafka only: records that name no origin transaction, applied without waiting.
    pub records_without_xid: u64,
    /// Kafka only: records held until their origin transaction ends on its primary.
    pub waiting_for_origin: u64,
}

/// One direction's share of a run.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct DirectionCounts {
    pub records_done: u64,
    pub records_failed: u64,
    pub records_dead: u64,
    pub records_dropped_aborted: u64,
    pub rows_resynced: u64,
    pub tables_repaired: u64,
    pub statements_applied: u64,
    pub change_log_events: u64,
    pub writes_outside_proxy: u64,
    /// Records still waiting in the direction's embedded retry log (on its primary).
    pub backlog: i64,
}

impl DirectionCounts {
    fn add(&mut self, o: &DirectionCounts) {
        self.records_done += o.records_done;
        self.records_failed += o.records_failed;
        self.records_dead += o.records_dead;
        self.records_dropped_aborted += o.records_dropped_aborted;
        self.rows_resynced += o.rows_resynced;
        self.tables_repaired += o.tables_repaired;
        self.statements_applied += o.statements_applied;
        self.change_log_events += o.change_log_events;
        self.writes_outside_proxy += o.writes_outside_proxy;
    }
}

/// Messages of one partition not yet replayed and committed.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub lag: i64,
}

impl ReplayReport {
    /// The counts of this report as one direction's.
    fn counts(&self) -> DirectionCounts {
        DirectionCounts {
            records_done: self.records_done,
            records_failed: self.records_failed,
            records_dead: self.records_dead,
            records_dropped_aborted: self.records_dropped_aborted,
            rows_resynced: self.rows_resynced,
            tables_repaired: self.tables_repaired,
            statements_applied: self.statements_applied,
            change_log_events: self.change_log_events,
            writes_outside_proxy: self.writes_outside_proxy,
            backlog: self.backlog,
        }
    }

    fn add_counts(&mut self, c: &DirectionCounts) {
        self.records_done += c.records_done;
        self.records_failed += c.records_failed;
        self.records_dead += c.records_dead;
        self.records_dropped_aborted += c.records_dropped_aborted;
        self.rows_resynced += c.rows_resynced;
        self.tables_repaired += c.tables_repaired;
        self.statements_applied += c.statements_applied;
        self.change_log_events += c.change_log_events;
        self.writes_outside_proxy += c.writes_outside_proxy;
    }

    /// This direction's counts (created empty).
    pub fn direction(&mut self, d: Direction) -> &mut DirectionCounts {
        self.directions.entry(d.as_str().to_string()).or_default()
    }

    /// Adds `sub`, the counts of work of one direction only, to the totals and to that
    /// direction's counts (its backlog is left alone: set where it is counted).
    pub fn add_direction(&mut self, d: Direction, sub: &ReplayReport) {
        let c = sub.counts();
        self.add_counts(&c);
        self.busy_seconds += sub.busy_seconds;
        self.records_without_xid += sub.records_without_xid;
        self.direction(d).add(&c);
    }

    /// Adds the counts of another run (an embedded pass within a Kafka run).
    pub fn absorb(&mut self, o: &ReplayReport) {
        self.add_counts(&o.counts());
        self.busy_seconds += o.busy_seconds;
        self.records_without_xid += o.records_without_xid;
        self.intents_cleared += o.intents_cleared;
        self.intents_queued += o.intents_queued;
        for (name, c) in &o.directions {
            let mine = self.directions.entry(name.clone()).or_default();
            mine.add(c);
            mine.backlog = c.backlog;
        }
        self.embedded_backlog = Some(o.backlog);
    }

    /// Records replayed per second of this run.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records_done as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Prometheus text exposition of this run.
    pub fn prometheus(&self) -> String {
        let mut out = format!(
            "# HELP switchyard_replay_records_total Retry records handled by this replay run.\n\
             # TYPE switchyard_replay_records_total counter\n\
             switchyard_replay_records_total{{outcome=\"applied\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"failed\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"dead\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"dropped_aborted\"}} {}\n\
             # HELP switchyard_replay_change_log_events_total Change-log rows applied by this run.\n\
             # TYPE switchyard_replay_change_log_events_total counter\n\
             switchyard_replay_change_log_events_total {}\n\
             # HELP switchyard_replay_records_without_xid_total Records that named no origin transaction (applied without waiting for it).\n\
             # TYPE switchyard_replay_records_without_xid_total counter\n\
             switchyard_replay_records_without_xid_total {}\n\
             # HELP switchyard_replay_waiting_for_origin Records held until their origin transaction ends on its primary.\n\
             # TYPE switchyard_replay_waiting_for_origin gauge\n\
             switchyard_replay_waiting_for_origin {}\n\
             # HELP switchyard_replay_backlog Records still waiting in the retry log.\n\
             # TYPE switchyard_replay_backlog gauge\n\
             switchyard_replay_backlog {}\n\
             # HELP switchyard_replay_oldest_record_age_seconds Age of the oldest waiting record.\n\
             # TYPE switchyard_replay_oldest_record_age_seconds gauge\n\
             switchyard_replay_oldest_record_age_seconds {:.3}\n\
             # HELP switchyard_replay_records_per_second Records replayed per second in this run.\n\
             # TYPE switchyard_replay_records_per_second gauge\n\
             switchyard_replay_records_per_second {:.1}\n",
            self.records_done,
            self.records_failed,
            self.records_dead,
            self.records_dropped_aborted,
            self.change_log_events,
            self.records_without_xid,
            self.waiting_for_origin,
            self.backlog,
            self.oldest_age_secs,
            self.rate()
        );
        if !self.directions.is_empty() {
            out.push_str(
                "# HELP switchyard_replay_applied_total Retry records and change-log rows applied by this run, by direction.\n\
                 # TYPE switchyard_replay_applied_total counter\n",
            );
            for (d, c) in &self.directions {
                out.push_str(&format!(
                    "switchyard_replay_applied_total{{direction=\"{d}\",source=\"retry_log\"}} {}\n\
                     switchyard_replay_applied_total{{direction=\"{d}\",source=\"change_log\"}} {}\n",
                    c.records_done, c.change_log_events
                ));
            }
        }
        if !self.partitions.is_empty() {
            out.push_str(
                "# HELP switchyard_replay_consumer_lag Kafka messages not yet replayed, by partition.\n\
                 # TYPE switchyard_replay_consumer_lag gauge\n",
            );
            for p in &self.partitions {
                out.push_str(&format!(
                    "switchyard_replay_consumer_lag{{partition=\"{}\"}} {}\n",
                    p.partition, p.lag
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_add_up_to_the_totals() {
        let mut total = ReplayReport::default();
        let forward = ReplayReport {
            records_done: 2,
            rows_resynced: 2,
            ..Default::default()
        };
        let reverse = ReplayReport {
            records_done: 1,
            change_log_events: 3,
            ..Default::default()
        };
        total.add_direction(Direction::OldToNew, &forward);
        total.add_direction(Direction::NewToOld, &reverse);
        total.add_direction(Direction::NewToOld, &reverse);
        assert_eq!((total.records_done, total.change_log_events), (4, 6));
        assert_eq!(total.directions["new-to-old"].records_done, 2);
        assert_eq!(total.directions["old-to-new"].rows_resynced, 2);
        let text = total.prometheus();
        assert!(
            text.contains(
                "switchyard_replay_applied_total{direction=\"new-to-old\",source=\"change_log\"} 6\n"
            ),
            "{text}"
        );
        let mut kafka = ReplayReport::default();
        kafka.absorb(&total);
        kafka.absorb(&total);
        assert_eq!(kafka.directions["new-to-old"].records_done, 4);
        assert_eq!(kafka.records_done, 8);
    }
}
