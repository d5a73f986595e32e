//! The retry records waiting in Kafka, for the pre-flight: what the reconcilers' consumer
//! group has not committed yet, summed over the topic's partitions (the broker's high
//! watermark minus the group's committed offset, or minus the low watermark where the group
//! never committed).

use crate::retry_kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Records in `settings.topic` not yet replayed by `settings.group`. A topic that does not
/// exist holds none.
pub async fn kafka_backlog(settings: &KafkaSettings) -> Result<i64, String> {
    let s = settings.clone();
    tokio::task::spawn_blocking(move || backlog_blocking(&s))
        .await
        .map_err(|e| format!("reading the Kafka backlog: {e}"))?
}

fn backlog_blocking(s: &KafkaSettings) -> Result<i64, String> {
    let what = |e: rdkafka::error::KafkaError| {
        format!(
            "reading the backlog of topic {} at {}: {e}",
            s.topic, s.brokers
        )
    };
    let mut config = s.client_config();
    config
        .set("group.id", &s.group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(what)?;
    let metadata = consumer
        .fetch_metadata(Some(&s.topic), TIMEOUT)
        .map_err(what)?;
    let Some(topic) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == s.topic && t.error().is_none())
    else {
        return Ok(0);
    };
    let mut partitions = TopicPartitionList::new();
    for p in topic.partitions() {
        partitions.add_partition(&s.topic, p.id());
    }
    let committed = consumer
        .committed_offsets(partitions, TIMEOUT)
        .map_err(what)?;
    let mut total = 0;
    for e in committed.elements_for_topic(&s.topic) {
        let (low, high) = consumer
            .fetch_watermarks(&s.topic, e.partition(), TIMEOUT)
            .map_err(what)?;
        let at = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        total += (high - at).max(0);
    }
    Ok(total)
}
