//! With the Kafka retry log, the cutover's backlog check counts the records the
//! reconcilers' consumer group has not replayed: reads do not move while one waits in the
//! topic, and do once replay drained it.

use super::origin::{broker_pair_and_topics, publish, row_record_dir};
use super::{replay_kafka, T};
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use switchyard_core::direction::Direction;
use switchyard_tests::cutover::cutover_cli;
use switchyard_tests::mirror::on;
use switchyard_tests::Broker;

fn backlog_check(
    pair: &switchyard_tests::proxy::Pair,
    broker: &Broker,
) -> Result<(Option<i32>, Value)> {
    let brokers = broker.bootstrap();
    let out = cutover_cli(
        pair,
        &[
            "reads-new",
            "--dry-run",
            "--json",
            "--kafka-brokers",
            &brokers,
        ],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let check = v["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == "retry backlog empty")
                .cloned()
        })
        .with_context(|| format!("no backlog check: {v}"))?;
    Ok((out.status.code(), check))
}

/// The backlog check exits with `code`, passes or not (`ok`), and says `detail`.
fn backlog_is(
    pair: &switchyard_tests::proxy::Pair,
    broker: &Broker,
    code: Option<i32>,
    ok: bool,
    detail: &str,
) -> Result<()> {
    let (got, check) = backlog_check(pair, broker)?;
    ensure!(got == code && check["ok"] == ok, "{check}");
    ensure!(
        check["detail"].as_str().unwrap_or("").contains(detail),
        "{check}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_move_while_records_wait_in_kafka() -> Result<()> {
    let (_serial, broker, pair) = broker_pair_and_topics(T).await?;
    on(&pair.old, "INSERT INTO t VALUES (1, 'only old has it')")?;
    publish(
        &broker,
        &row_record_dir(Direction::OldToNew, "t", 1, None),
        0,
    )
    .await?;

    backlog_is(&pair, &broker, Some(1), false, "1 in Kafka")?;

    let run = replay_kafka(&pair, &broker, &[]).await?;
    ensure!(run.code() == Some(0), "replay: {}", run.text());
    ensure!(on(&pair.new, "SELECT v FROM t WHERE id = 1")? == "only old has it");
    backlog_is(&pair, &broker, Some(0), true, "0 in Kafka")?;
    Ok(())
}
