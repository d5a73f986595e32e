//! The Kafka backend of the retry log on the proxy's side: an idempotent producer whose
//! delivery reports are awaited, within `confirm_timeout_ms`, before the client's
//! transaction commits on the primary. What to do when the broker does not confirm in time
//! is the caller's choice (`on_failure`); this module only says whether it did.

use futures_util::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_core::retry::RetryRecord;
use switchyard_core::retry_kafka::{self, KafkaSettings, KafkaSetupError};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the broker did not confirm {pending} retry record(s) within {timeout:?}")]
    Timeout { pending: usize, timeout: Duration },
    #[error("the broker refused a retry record: {0}")]
    Refused(KafkaError),
    #[error("encoding a retry record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SinkError {
    /// Short label for metrics and status.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Timeout { .. } => "timeout",
            SinkError::Refused(_) => "refused",
            SinkError::Encode(_) => "encode",
        }
    }
}

/// Figures behind `/api/status` (`mirror.retry_log`).
#[derive(Default)]
pub struct KafkaStats {
    pub records_confirmed: AtomicU64,
    pub batches_failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct KafkaSink {
    pub settings: KafkaSettings,
    producer: FutureProducer,
    /// When the topics were last (re)created after the broker said they were missing.
    last_topic_check: Mutex<Option<Instant>>,
    pub stats: KafkaStats,
}

const TOPIC_RECHECK_EVERY: Duration = Duration::from_secs(5);

impl KafkaSink {
    /// Checks (or creates) the topics, then makes the producer. Called at start: a broker
    /// that refuses or does not answer stops the proxy with a clear error.
    pub async fn start(settings: KafkaSettings) -> Result<Arc<Self>, KafkaSetupError> {
        retry_kafka::ensure_topics(
            &settings,
            settings.confirm_timeout().max(Duration::from_secs(5)),
        )
        .await?;
        let sink = Self::with_producer(settings)?;
        // Connects the producer before the first commit needs it, so that commit's wait is
        // the broker's confirmation and not the producer's start.
        let warm = sink.clone();
        let timeout = warm.settings.confirm_timeout().max(Duration::from_secs(5));
        let _ = tokio::task::spawn_blocking(move || {
            warm.producer
                .client()
                .fetch_metadata(Some(&warm.settings.topic), timeout)
                .map(|_| ())
        })
        .await;
        Ok(sink)
    }

    /// The sink without the topic check (tests against librdkafka's mock cluster).
    fn with_producer(settings: KafkaSettings) -> Result<Arc<Self>, KafkaSetupError> {
        let producer: FutureProducer =
            settings
                .producer_config()
                .create()
                .map_err(|source| KafkaSetupError::Client {
                    brokers: settings.brokers.clone(),
                    source,
                })?;
        Ok(Arc::new(KafkaSink {
            settings,
            producer,
            last_topic_check: Mutex::new(None),
            stats: KafkaStats::default(),
        }))
    }

    /// Sends `records` and waits until the broker confirms every one (acks=all), or the
    /// confirm timeout passes. A record confirmed after the timeout is a harmless duplicate
    /// of whatever the caller did instead.
    pub async fn send(self: &Arc<Self>, records: &[RetryRecord]) -> Result<(), SinkError> {
        let started = Instant::now();
        let timeout = self.settings.confirm_timeout();
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let payload = retry_kafka::encode(r)?;
            let record = FutureRecord::to(&self.settings.topic)
                .key(retry_kafka::message_key(r))
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => return Err(self.failed(SinkError::Refused(e))),
            }
        }
        let n = pending.len();
        let confirmed = match tokio::time::timeout(timeout, join_all(pending)).await {
            Ok(c) => c,
            Err(_) => {
                return Err(self.failed(SinkError::Timeout {
                    pending: n,
                    timeout,
                }))
            }
        };
        for c in confirmed {
            match c {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownTopic
                        )
                    ) {
                        self.recreate_topics();
                    }
                    return Err(self.failed(SinkError::Refused(e)));
                }
                Err(_canceled) => {
                    return Err(self.failed(SinkError::Refused(KafkaError::Canceled)));
                }
            }
        }
        self.stats
            .records_confirmed
            .fetch_add(n as u64, Ordering::Relaxed);
        metrics::histogram!(crate::metrics::RETRY_KAFKA_CONFIRM_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn failed(&self, e: SinkError) -> SinkError {
        self.stats.batches_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = Some(e.to_string());
        }
        metrics::counter!(crate::metrics::RETRY_KAFKA_FAILURES_TOTAL, "kind" => e.kind())
            .increment(1);
        e
    }

    /// A broker that lost its topics (a fresh cluster, an operator's mistake) gets them
    /// back, at most every few seconds, off the client's path.
    fn recreate_topics(self: &Arc<Self>) {
        let Ok(mut last) = self.last_topic_check.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < TOPIC_RECHECK_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let me = self.clone();
        tokio::spawn(async move {
            match retry_kafka::ensure_topics(&me.settings, Duration::from_secs(5)).await {
                Ok(()) => {
                    tracing::info!(topic = %me.settings.topic, "Re-created the retry log topics on the broker.")
                }
                Err(e) => tracing::warn!(error = %e, "Re-creating the retry log topics failed."),
            }
        });
    }

    /// Waits for records still in flight (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Sends a commit's records where they belong. Returns the records that must go into the
/// embedded table in the client's transaction (statement records always, row and table
/// records when the broker did not confirm and `on_failure = "embedded"`), or the reason
/// the commit must be refused (`on_failure = "fail"`).
pub async fn route_records(
    sink: Option<&Arc<KafkaSink>>,
    status: &super::status::MirrorStatus,
    records: Vec<RetryRecord>,
) -> Result<Vec<RetryRecord>, String> {
    use switchyard_core::retry::RecordKind;
    use switchyard_core::retry_kafka::OnBrokerFailure;
    let Some(sink) = sink else {
        return Ok(records);
    };
    let (to_kafka, mut embedded): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.kind != RecordKind::Statement);
    if to_kafka.is_empty() {
        return Ok(embedded);
    }
    let n = to_kafka.len() as u64;
    match sink.send(&to_kafka).await {
        Ok(()) => {
            status.records_kafka.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(crate::metrics::MIRROR_RETRY_RECORDS_TOTAL, "backend" => "kafka")
                .increment(n);
            Ok(embedded)
        }
        Err(e) => match sink.settings.on_failure {
            OnBrokerFailure::Embedded => {
                tracing::warn!(error = %e, records = n, "Kafka did not take the retry records; they go to the embedded table in the same transaction.");
                status.records_fallback.fetch_add(n, Ordering::Relaxed);
                embedded.extend(to_kafka);
                Ok(embedded)
            }
            OnBrokerFailure::Fail => {
                tracing::error!(error = %e, records = n, "Kafka did not take the retry records; the client's transaction is rolled back (retry_log.kafka.on_failure = fail).");
                Err(format!(
                    "{e} (retry_log.kafka.on_failure = \"fail\", topic {})",
                    sink.settings.topic
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    //! Fault injection with librdkafka's in-process mock cluster: fast, and able to produce
    //! broker behaviour a real broker gives only under duress.
    use super::*;
    use crate::mirror::status::MirrorStatus;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use switchyard_core::retry::{Origin, RecordKind};
    use switchyard_core::retry_kafka::OnBrokerFailure;

    const TOPIC: &str = "switchyard.retry";

    fn record(kind: RecordKind, id: i32) -> RetryRecord {
        RetryRecord {
            idempotency_key: format!("k{id}"),
            kind,
            table_name: Some("\"public\".\"t\"".into()),
            key: Some(serde_json::json!({ "id": id })),
            statement: (kind == RecordKind::Statement).then(|| "TRUNCATE t".to_string()),
            origin: Origin {
                instance: "test".into(),
                xid: Some("42".into()),
                ordinal: 1,
                direction: switchyard_core::direction::Direction::OldToNew,
            },
            reason: "secondary down".into(),
        }
    }

    fn sink(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        on_failure: OnBrokerFailure,
    ) -> Arc<KafkaSink> {
        sink_with(mock, on_failure, 500)
    }

    fn sink_with(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        on_failure: OnBrokerFailure,
        confirm_timeout_ms: u64,
    ) -> Arc<KafkaSink> {
        let settings = KafkaSettings {
            brokers: mock.bootstrap_servers(),
            confirm_timeout_ms,
            on_failure,
            ..KafkaSettings::default()
        };
        KafkaSink::with_producer(settings).expect("a producer")
    }

    fn mock() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let mock = MockCluster::new(1).expect("a mock cluster");
        mock.create_topic(TOPIC, 2, 1).expect("a topic");
        mock
    }

    #[tokio::test]
    async fn confirmed_records_go_to_kafka_and_statements_stay_embedded() {
        let mock = mock();
        // The producer's first connection is part of this wait: a generous timeout.
        let s = sink_with(&mock, OnBrokerFailure::Fail, 10_000);
        let status = MirrorStatus::default();
        let embedded = route_records(
            Some(&s),
            &status,
            vec![
                record(RecordKind::Row, 1),
                record(RecordKind::Statement, 2),
                record(RecordKind::Row, 3),
            ],
        )
        .await
        .expect("confirmed");
        assert_eq!(embedded.len(), 1);
        assert_eq!(embedded[0].kind, RecordKind::Statement);
        assert_eq!(status.records_kafka.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats.records_confirmed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn produce_errors_until_the_timeout_fall_back_to_the_table() {
        let mock = mock();
        // Retriable errors for longer than the confirm timeout.
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
        );
        let s = sink(&mock, OnBrokerFailure::Embedded);
        let status = MirrorStatus::default();
        let rows = vec![record(RecordKind::Row, 1), record(RecordKind::Row, 2)];
        let embedded = route_records(Some(&s), &status, rows.clone())
            .await
            .expect("falls back");
        assert_eq!(embedded, rows, "every record goes to the embedded table");
        assert_eq!(status.records_fallback.load(Ordering::Relaxed), 2);
        assert_eq!(status.records_kafka.load(Ordering::Relaxed), 0);
        let last = s
            .stats
            .last_error
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_default();
        assert!(last.contains("did not confirm"), "{last}");
    }

    #[tokio::test]
    async fn a_broker_that_is_down_refuses_the_commit_when_configured() {
        let mock = mock();
        mock.broker_down(1).expect("broker down");
        let s = sink(&mock, OnBrokerFailure::Fail);
        let status = MirrorStatus::default();
        let started = Instant::now();
        let err = route_records(Some(&s), &status, vec![record(RecordKind::Row, 1)])
            .await
            .expect_err("no record, no commit");
        assert!(
            err.contains("did not confirm") && err.contains("on_failure"),
            "{err}"
        );
        // Bounded by the confirm timeout, not librdkafka's own (five times longer).
        assert!(
            started.elapsed() < Duration::from_millis(2400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(s.stats.batches_failed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_slow_broker_counts_as_down_after_the_timeout_then_recovers() {
        let mock = mock();
        mock.broker_round_trip_time(1, Duration::from_secs(2))
            .expect("delay");
        let s = sink(&mock, OnBrokerFailure::Fail);
        let status = MirrorStatus::default();
        assert!(
            route_records(Some(&s), &status, vec![record(RecordKind::Row, 1)])
                .await
                .is_err()
        );
        mock.broker_round_trip_time(1, Duration::ZERO)
            .expect("no delay");
        // The late confirmation of the first record may still arrive: harmless. New records
        // are confirmed again once the broker answers in time.
        let mut ok = false;
        for _ in 0..20 {
            if route_records(Some(&s), &status, vec![record(RecordKind::Row, 2)])
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
        }
        assert!(ok, "records are confirmed again once the broker is fast");
    }

    #[tokio::test]
    async fn without_kafka_every_record_stays_embedded() {
        let status = MirrorStatus::default();
        let rows = vec![record(RecordKind::Row, 1), record(RecordKind::Table, 2)];
        assert_eq!(
            route_records(None, &status, rows.clone())
                .await
                .expect("ok"),
            rows
        );
    }
}
