//! Consumer lag per partition: exactly from the broker when idle, from librdkafka's
//! statistics while replaying.

use crate::replay::PartitionLag;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::statistics::Statistics;
use rdkafka::Offset;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The consumer, with a context that keeps librdkafka's per-partition lag figures.
pub(super) type Replayer = StreamConsumer<LagContext>;

pub(super) struct LagContext {
    pub topic: String,
    pub lags: Mutex<BTreeMap<i32, i64>>,
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

/// Lag per assigned partition, exactly: the broker's high watermark minus the committed
/// offset. Network round trips per partition, so only when idle (is the backlog drained?).
pub(super) fn exact_lag(consumer: &Replayer, topic: &str) -> Vec<PartitionLag> {
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
pub(super) fn cached_lag(consumer: &Replayer) -> Vec<PartitionLag> {
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
