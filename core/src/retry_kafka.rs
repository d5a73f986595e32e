//! The Kafka backend of the retry log: settings shared by the proxy (producer) and the
//! reconciler (consumer group), topic set-up, and the wire form of a record.
//!
//! A record travels as its JSON ([`RetryRecord`]) with the table as the message key, so all
//! records of one table land in one partition and keep their order. Statement-mode records
//! (DDL and the like) are not sent here: they need one order across tables and a cheap
//! "is anything still queued?" check before the next statement, which the embedded table
//! gives and a partitioned topic does not. They stay in `_switchyard.retry_log`.

use crate::config_layer::{ConfigError, Origin};
use crate::retry::RetryRecord;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where retry records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `_switchyard.retry_log` on the old database, written in the client's transaction.
    #[default]
    Embedded,
    /// A Kafka topic; delivery is confirmed before the client's transaction commits.
    Kafka,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Kafka => "kafka",
        }
    }
}

/// What the proxy does when the broker cannot confirm a record in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnBrokerFailure {
    /// Write the records to the embedded table in the same transaction instead.
    #[default]
    Embedded,
    /// Roll the client's transaction back with an error.
    Fail,
}

/// `[retry_log]` (shared by the proxy and the reconciler, so one file serves both).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryLogConfig {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub kafka: KafkaSettings,
}

/// `[retry_log.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated host:port list.
    #[serde(default)]
    pub brokers: String,
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Where the reconciler puts records it gave up on, with the reason in a header.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Partitions of the topics when the proxy or reconciler creates them.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How long a commit waits for the broker to confirm its records.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    #[serde(default)]
    pub on_failure: OnBrokerFailure,
    /// Consumer group of the reconcilers.
    #[serde(default = "default_group")]
    pub group: String,
    /// Static group membership (`group.instance.id`): a reconciler restarted under the same
    /// id takes its partitions back at once instead of waiting for the group to notice
    /// that the old process is gone. One id per reconciler (e.g. the pod name).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Passed to librdkafka as they are (TLS, SASL, ...): `"security.protocol" = "ssl"`.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "switchyard.retry".into()
}
fn default_dead_letter_topic() -> String {
    "switchyard.retry.dead".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    1
}
fn default_confirm_timeout_ms() -> u64 {
    2000
}
fn default_group() -> String {
    "switchyard-reconciler".into()
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: String::new(),
            topic: default_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            confirm_timeout_ms: default_confirm_timeout_ms(),
            on_failure: OnBrokerFailure::default(),
            group: default_group(),
            instance_id: None,
            client: BTreeMap::new(),
        }
    }
}

/// Settings librdkafka must not get from `client`, because the guarantees depend on them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "group.instance.id",
];

impl RetryLogConfig {
    /// Checks for the config layer; `prefix` is the dotted path of this table.
    pub fn validate(
        &self,
        prefix: &str,
        errors: &mut Vec<ConfigError>,
        origin_of: &dyn Fn(&str) -> Origin,
    ) {
        let mut bad = |key: &str, message: String| {
            let key = format!("{prefix}.{key}");
            errors.push(ConfigError {
                origin: origin_of(&key),
                key,
                message,
            })
        };
        if self.backend != Backend::Kafka {
            return;
        }
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            bad(
                "kafka.brokers",
                "is required with retry_log.backend = \"kafka\" (e.g. \"127.0.0.1:9092\")".into(),
            );
        }
        for (key, topic) in [
            ("kafka.topic", &k.topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ] {
            if let Err(m) = check_topic_name(topic) {
                bad(key, m);
            }
        }
        if k.topic == k.dead_letter_topic {
            bad(
                "kafka.dead_letter_topic",
                "must differ from kafka.topic".into(),
            );
        }
        if k.partitions < 1 {
            bad("kafka.partitions", "must be at least 1".into());
        }
        if k.replication_factor < 1 {
            bad("kafka.replication_factor", "must be at least 1".into());
        }
        if k.confirm_timeout_ms < 10 || k.confirm_timeout_ms > 300_000 {
            bad(
                "kafka.confirm_timeout_ms",
                "must be between 10 and 300000".into(),
            );
        }
        if k.group.trim().is_empty() {
            bad("kafka.group", "must not be empty".into());
        }
        for name in k.client.keys() {
            if RESERVED.contains(&name.as_str()) {
                bad(
                    &format!("kafka.client.{name}"),
                    "is set by Switchyard (its guarantees depend on it); use kafka.brokers / kafka.group for addresses and groups".into(),
                );
            }
        }
    }
}

/// Kafka's rules for topic names: 1-249 characters of `[a-zA-Z0-9._-]`.
fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err("must be 1 to 249 characters".into());
    }
    if name == "." || name == ".." {
        return Err("must not be \".\" or \"..\"".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed in a topic name (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

impl KafkaSettings {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// A librdkafka configuration with the brokers and the pass-through settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c
    }

    /// The producer's configuration: idempotent, `acks=all`, and librdkafka's own delivery
    /// timeout a little above the commit's wait, so a late confirmation is still a
    /// confirmation (a duplicate record is harmless, a missing one is not).
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set(
                "message.timeout.ms",
                (self.confirm_timeout_ms.max(1000) * 5).to_string(),
            );
        c
    }

    /// The consumer's configuration: offsets are committed by hand after the re-sync
    /// commits, never automatically.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        if let Some(id) = &self.instance_id {
            c.set("group.instance.id", id);
        }
        c
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("creating a Kafka admin client for {brokers}: {source}")]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("the broker at {brokers} did not answer within {timeout:?}: {source}")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        source: rdkafka::error::KafkaError,
    },
    #[error("the broker at {brokers} refused to create topic {topic}: {code}")]
    Refused {
        brokers: String,
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates the retry and dead-letter topics when they are missing (an existing topic is
/// fine, whatever its partition count) and waits until the broker's metadata shows them.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<(), KafkaSetupError> {
    let brokers = settings.brokers.clone();
    let mut cfg = settings.client_config();
    cfg.set("socket.timeout.ms", timeout.as_millis().max(10).to_string());
    let admin: std::sync::Arc<AdminClient<DefaultClientContext>> =
        std::sync::Arc::new(cfg.create().map_err(|source| KafkaSetupError::Client {
            brokers: brokers.clone(),
            source,
        })?);
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let topics: Vec<NewTopic> = [&settings.topic, &settings.dead_letter_topic]
        .into_iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let results = admin
        .create_topics(topics.iter(), &options)
        .await
        .map_err(|source| KafkaSetupError::Unreachable {
            brokers: brokers.clone(),
            timeout,
            source,
        })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaSetupError::Refused {
                    brokers,
                    topic,
                    code,
                });
            }
        }
    }
    // Metadata can lag creation by a moment; producing before it shows fails.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wanted = [settings.topic.clone(), settings.dead_letter_topic.clone()];
        let md = {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_millis(500))
            })
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
        };
        let ready = md.as_ref().is_ok_and(|m| {
            wanted.iter().all(|w| {
                m.topics().iter().any(|t| {
                    t.name() == w.as_str() && t.error().is_none() && !t.partitions().is_empty()
                })
            })
        });
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match md {
                Err(source) => KafkaSetupError::Unreachable {
                    brokers,
                    timeout,
                    source,
                },
                Ok(_) => KafkaSetupError::Refused {
                    brokers,
                    topic: settings.topic.clone(),
                    code: RDKafkaErrorCode::UnknownTopicOrPartition,
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The message key of a record: its table, so one table's records share a partition.
pub fn message_key(r: &RetryRecord) -> &str {
    r.table_name.as_deref().unwrap_or("")
}

/// The message payload of a record.
pub fn encode(r: &RetryRecord) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(r)
}

/// A record from a message payload.
pub fn decode(payload: &[u8]) -> Result<RetryRecord, serde_json::Error> {
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direction::Direction;
    use crate::retry::{Origin as RecordOrigin, RecordKind};

    fn kafka(brokers: &str) -> RetryLogConfig {
        RetryLogConfig {
            backend: Backend::Kafka,
            kafka: KafkaSettings {
                brokers: brokers.into(),
                ..KafkaSettings::default()
            },
        }
    }

    fn errors(c: &RetryLogConfig) -> Vec<String> {
        let mut e = Vec::new();
        c.validate("retry_log", &mut e, &|_| Origin::Default);
        e.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn kafka_needs_brokers_and_sane_topics() {
        assert!(errors(&kafka("127.0.0.1:9092")).is_empty());
        assert_eq!(errors(&kafka(" ")), vec!["retry_log.kafka.brokers"]);
        let mut c = kafka("b:9092");
        c.kafka.topic = "bad topic".into();
        c.kafka.dead_letter_topic = "bad topic".into();
        c.kafka.client.insert("acks".into(), "1".into());
        c.kafka.partitions = 0;
        assert_eq!(
            errors(&c),
            vec![
                "retry_log.kafka.topic",
                "retry_log.kafka.dead_letter_topic",
                "retry_log.kafka.dead_letter_topic",
                "retry_log.kafka.partitions",
                "retry_log.kafka.client.acks",
            ]
        );
        // Nothing is checked for the embedded backend.
        let mut e = kafka("");
        e.backend = Backend::Embedded;
        assert!(errors(&e).is_empty());
    }

    #[test]
    fn records_round_trip_keyed_by_table() {
        let r = RetryRecord {
            idempotency_key: "k1".into(),
            kind: RecordKind::Row,
            table_name: Some("\"public\".\"t\"".into()),
            key: Some(serde_json::json!({"id": 7})),
            statement: None,
            origin: RecordOrigin {
                ordinal: 2,
                ..RecordOrigin::new(Direction::NewToOld, "p", Some("9".into()))
            },
            reason: "down".into(),
        };
        assert_eq!(message_key(&r), "\"public\".\"t\"");
        let back = decode(&encode(&r).expect("encodes")).expect("decodes");
        assert_eq!(back, r);
        assert!(decode(b"{not json").is_err());
    }

    #[test]
    fn producer_is_idempotent_and_consumer_never_auto_commits() {
        let s = kafka("b:1").kafka;
        let p = s.producer_config();
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        let c = s.consumer_config();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }
}
