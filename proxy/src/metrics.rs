//! Metric names, and the Prometheus recorder shared by every proxy in the process.
//! Labels never carry SQL text, keys or credentials: classes, SQLSTATEs and roles only.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;

pub const CLIENT_CONNECTIONS: &str = "switchyard_client_connections";
pub const CLIENT_CONNECTIONS_TOTAL: &str = "switchyard_client_connections_total";
pub const CLIENT_REJECTED_TOTAL: &str = "switchyard_client_connections_rejected_total";
pub const AUTH_FAILURES_TOTAL: &str = "switchyard_auth_failures_total";
pub const STATEMENTS_TOTAL: &str = "switchyard_statements_total";
pub const CUTOVER_EPOCH: &str = "switchyard_cutover_epoch";
pub const CUTOVER_FLIPS_TOTAL: &str = "switchyard_cutover_flips_total";
pub const CUTOVER_FLIP_SECONDS: &str = "switchyard_cutover_flip_confirm_seconds";
pub const READS_ROUTED_TOTAL: &str = "switchyard_reads_routed_total";
pub const READS_SENT_BACK_TOTAL: &str = "switchyard_reads_sent_back_total";
pub const SESSIONS_MOVED_TOTAL: &str = "switchyard_sessions_moved_total";
pub const CUTOVER_WRITE_PAUSE_SECONDS: &str = "switchyard_cutover_write_pause_seconds";
pub const CUTOVER_WRITE_PAUSE_HELD: &str = "switchyard_cutover_write_pause_held_sessions";
pub const STATEMENTS_UNPARSED_TOTAL: &str = "switchyard_statements_unparsed_total";
pub const CLASSIFIER_CACHE_TOTAL: &str = "switchyard_classifier_cache_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const SERVER_ERRORS_TOTAL: &str = "switchyard_server_errors_total";
pub const PROTOCOL_ERRORS_TOTAL: &str = "switchyard_protocol_errors_total";
pub const BACKEND_CONNECT_ERRORS_TOTAL: &str = "switchyard_backend_connect_errors_total";
pub const BACKEND_UP: &str = "switchyard_backend_up";
pub const CANCEL_REQUESTS_TOTAL: &str = "switchyard_cancel_requests_total";
pub const MIRROR_ROWS_TOTAL: &str = "switchyard_mirror_rows_total";
pub const MIRROR_STATEMENT_MODE_TOTAL: &str = "switchyard_mirror_statement_mode_total";
pub const MIRROR_SECONDARY_ERRORS_TOTAL: &str = "switchyard_mirror_secondary_errors_total";
pub const MIRROR_IN_DOUBT_TOTAL: &str = "switchyard_mirror_in_doubt_total";
pub const MIRROR_COMMITS_TOTAL: &str = "switchyard_mirror_commits_total";
pub const MIRROR_INTENTS_CLEARED_TOTAL: &str = "switchyard_mirror_intents_cleared_total";
/// Lockstep-mode commits whose secondary COMMIT failed: their intents wait for recovery.
pub const MIRROR_INTENTS_UNFINISHED_TOTAL: &str = "switchyard_mirror_intents_unfinished_total";
pub const MIRROR_RETRY_RECORDS_TOTAL: &str = "switchyard_mirror_retry_records_total";
pub const MIRROR_RETRY_BACKLOG: &str = "switchyard_mirror_retry_backlog";
pub const MIRROR_RETRY_OLDEST_SECONDS: &str = "switchyard_mirror_retry_oldest_seconds";
pub const RETRY_KAFKA_CONFIRM_SECONDS: &str = "switchyard_retry_kafka_confirm_seconds";
pub const RETRY_KAFKA_FAILURES_TOTAL: &str = "switchyard_retry_kafka_failures_total";
pub const MIRROR_COMMITS_REFUSED_TOTAL: &str = "switchyard_mirror_commits_refused_total";
pub const CAPTURE_EVENTS_TOTAL: &str = "switchyard_capture_events_total";
pub const COMMIT_PHASE_SECONDS: &str = "switchyard_commit_phase_seconds";
pub const CAPTURE_LOG_BACKLOG: &str = "switchyard_capture_log_backlog";
pub const CAPTURE_LOG_APPLIED_TOTAL: &str = "switchyard_capture_log_applied_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls (more proxies in one test process)
/// share it. `None` if another recorder was installed first by the embedding program.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// How often histogram samples are folded into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds the histograms' pending samples into their buckets every `interval` until `stop`.
/// The recorder keeps every sample recorded since the last scrape until something drains
/// it; with nobody scraping `/metrics`, a proxy under load would grow by 8 bytes per
/// statement without this.
pub async fn upkeep(handle: PrometheusHandle, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// Handles for the metrics touched on every statement, resolved once: looking a metric up by
/// name and labels costs a hash of the key each time, which adds up at tens of thousands of
/// statements per second.
pub struct HotMetrics {
    pub statements: [metrics::Counter; 6],
    pub request_duration: [metrics::Histogram; 6],
    pub cache_hit: metrics::Counter,
    pub cache_miss: metrics::Counter,
    /// Time in each phase of a lockstep commit: drain, prepare, record, commit_primary.
    pub commit_phase: [metrics::Histogram; 4],
}

static HOT: OnceLock<HotMetrics> = OnceLock::new();

/// The hot-path handles; call only after `handle()` installed the recorder.
pub fn hot() -> &'static HotMetrics {
    use crate::classify::StatementClass as C;
    HOT.get_or_init(|| {
        let classes = [
            C::Read,
            C::Write,
            C::Ddl,
            C::Transaction,
            C::Session,
            C::Other,
        ];
        HotMetrics {
            statements: classes.map(|c| metrics::counter!(STATEMENTS_TOTAL, "class" => c.as_str())),
            request_duration: classes
                .map(|c| metrics::histogram!(REQUEST_DURATION, "class" => c.as_str())),
            cache_hit: metrics::counter!(CLASSIFIER_CACHE_TOTAL, "result" => "hit"),
            cache_miss: metrics::counter!(CLASSIFIER_CACHE_TOTAL, "result" => "miss"),
            commit_phase: ["drain", "prepare", "record", "commit_primary"]
                .map(|p| metrics::histogram!(COMMIT_PHASE_SECONDS, "phase" => p)),
        }
    })
}
