//! Lockstep mode (no prepared transactions) with the Kafka retry log: the secondary killed
//! under pgbench; the transactions that failed on it before their commit send their records
//! to the topic, those cut off between the two commits leave intents on old; replay from the
//! topic (which also settles intents and the embedded table) makes both sides equal.

use super::{kafka_config, replay_kafka, SERIAL};
use anyhow::{ensure, Result};
use switchyard_core::retry_kafka::OnBrokerFailure;
use switchyard_proxy::config::MirrorMode;
use switchyard_tests::mirror::{
    assert_pgbench_level, on, pgbench_across_secondary_restart, pgbench_pair_without_prepare,
};
use switchyard_tests::proxy::{proxy_url, start_proxy};
use switchyard_tests::{Broker, PgCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_mode_with_kafka_replays_records_and_intents() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let broker = tokio::task::spawn_blocking(Broker::start).await??;
    let pair = pgbench_pair_without_prepare().await?;
    let mut config = kafka_config(&pair, &broker, OnBrokerFailure::Fail);
    config.mirror.mode = MirrorMode::Lockstep;
    let proxy = start_proxy(config).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    pgbench_across_secondary_restart(&pair, &url).await?;
    drop(proxy);
    let run = replay_kafka(&pair, &broker, &["--format", "json"]).await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())?;
    ensure!(
        report["records_done"].as_u64().unwrap_or(0) > 0,
        "the outage's records came from the topic: {report}"
    );
    ensure!(on(&pair.old, "SELECT count(*) FROM _switchyard.intents")? == "0");
    assert_pgbench_level(&pair).await
}
