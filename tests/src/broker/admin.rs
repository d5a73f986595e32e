//! Kafka-client side of [`Broker`]: client configuration, readiness probe, topic creation.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::process::Broker;
use crate::wait::poll_until_async;

impl Broker {
    /// An rdkafka configuration with `bootstrap.servers` set to this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// One metadata round trip: true when the broker answers with itself in the broker list.
    pub(super) fn metadata_ok(consumer: &BaseConsumer) -> bool {
        match consumer.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(metadata) => !metadata.brokers().is_empty(),
            Err(err) => {
                tracing::debug!("broker metadata not ready: {err}");
                false
            }
        }
    }

    /// A short-lived metadata client for the readiness probe.
    pub(super) fn probe_client(&self) -> Result<BaseConsumer> {
        self.client_config()
            .set("socket.timeout.ms", "2000")
            .create()
            .context("creating an rdkafka metadata client")
    }

    /// Creates `name` with `partitions` partitions (replication 1) and waits until the
    /// broker's metadata lists all of them. An existing topic is an error.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("creating an rdkafka AdminClient")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .with_context(|| format!("CreateTopics {name} on {}", self.bootstrap()))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic} on {}: {code}", self.bootstrap());
            }
        }
        let wanted = usize::try_from(partitions).unwrap_or(0);
        poll_until_async(
            &format!("topic {name} to appear in metadata"),
            Duration::from_secs(10),
            || async {
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(name), Duration::from_secs(2));
                Ok(metadata.ok().and_then(|m| {
                    m.topics()
                        .iter()
                        .any(|t| {
                            t.name() == name
                                && t.error().is_none()
                                && t.partitions().len() == wanted
                        })
                        .then_some(())
                }))
            },
        )
        .await
    }
}
