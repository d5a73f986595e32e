//! Replay as a consumer group: a reconciler killed before its offset commit (the batch comes
//! again, harmlessly), two reconcilers sharing the partitions through a rebalance mid-replay,
//! and poison records dead-lettered with the reason.

use super::*;
use anyhow::{ensure, Context, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use switchyard_core::retry_kafka::OnBrokerFailure;
use switchyard_tests::mirror::{assert_verified, on};
use switchyard_tests::proxy::{start_proxy, DB};
use switchyard_tests::reconciler::ReconcilerProcess;
use switchyard_tests::wait::poll_until;

/// Scenario 11 with Kafka: a reconciler that dies after applying a batch but before
/// committing its offsets leaves the batch to be delivered again; replaying it twice is
/// harmless (`n = n + 1` through the proxy counts once per statement on both sides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_killed_before_the_offset_commit_replays_harmlessly() -> Result<()> {
    let (_serial, broker, pair) = broker_and_pair(
        "CREATE TABLE c (id int PRIMARY KEY, n int NOT NULL); INSERT INTO c SELECT g, 0 FROM generate_series(1, 20) g",
    )
    .await?;
    let (_proxy, client) = kafka_proxy(&pair, &broker, OnBrokerFailure::Fail).await?;
    tokio::task::block_in_place(|| pair.new.stop_immediate())?;
    for _ in 0..2 {
        client.execute("UPDATE c SET n = n + 1", &[]).await?;
    }
    tokio::task::block_in_place(|| pair.new.start())?;
    let flags = kafka_flags(&broker);
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    // Static membership: the restarted reconciler is the same member of the group, as a
    // restarted pod would be.
    let mut args: Vec<&str> = vec!["replay", "--old", &old, "--new", &new];
    args.extend(flags.iter().map(String::as_str));
    let crashed = tokio::task::block_in_place(|| -> Result<String> {
        let mut p =
            ReconcilerProcess::spawn(&args, &[("SWITCHYARD_FAILPOINT", "replay-after-apply")])?;
        let status = poll_until("the reconciler to abort", Duration::from_secs(60), || {
            p.try_wait()
        })?;
        ensure!(
            !status.success(),
            "the failpoint should abort the run:\n{}",
            p.log_text()
        );
        Ok(p.log_text())
    })?;
    ensure!(
        crashed.contains("failpoint replay-after-apply"),
        "{crashed}"
    );
    // Applied already, offsets not committed: the rows are right, the records still there.
    ensure!(on(&pair.new, "SELECT sum(n) FROM c")? == "40");
    let run = replay_kafka(&pair, &broker, &["--format", "json"])
        .await?
        .exits(0)?;
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())?;
    ensure!(
        report["records_done"].as_u64().unwrap_or(0) >= 20,
        "the batch is delivered again: {}",
        run.text()
    );
    ensure!(on(&pair.new, "SELECT sum(n) FROM c")? == "40");
    assert_verified(&pair, "c").await?;
    Ok(())
}

/// Two reconcilers in one consumer group share the partitions; the second joins while the
/// first is replaying (a rebalance mid-replay). Both end up with partitions, every record
/// is applied, and the tables end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_share_partitions_through_a_rebalance() -> Result<()> {
    let tables: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let schema: String = tables
        .iter()
        .map(|t| format!("CREATE TABLE {t} (id int PRIMARY KEY, v text);"))
        .collect();
    let (_serial, broker, pair) = broker_and_pair(&schema).await?;
    let (_proxy, client) = kafka_proxy(&pair, &broker, OnBrokerFailure::Fail).await?;
    tokio::task::block_in_place(|| pair.new.stop_immediate())?;
    for t in &tables {
        // One statement per 50 rows: many records, few round trips.
        for chunk in 0..20 {
            client
                .execute(
                    &format!(
                        "INSERT INTO {t} SELECT g, md5(g::text) FROM generate_series({} , {}) g",
                        chunk * 50 + 1,
                        chunk * 50 + 50
                    ),
                    &[],
                )
                .await?;
        }
    }
    tokio::task::block_in_place(|| pair.new.start())?;
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let dir = tempfile::tempdir()?;
    let metrics = |name: &str| dir.path().join(name).display().to_string();
    let (ma, mb) = (metrics("a.prom"), metrics("b.prom"));
    let spawn = |m: &str| -> Result<ReconcilerProcess> {
        let flags = kafka_flags_as(&broker, m);
        let mut args: Vec<&str> = vec![
            "replay",
            "--follow",
            "--batch",
            "50",
            "--old",
            &old,
            "--new",
            &new,
            "--metrics-file",
            m,
        ];
        args.extend(flags.iter().map(String::as_str));
        ReconcilerProcess::spawn(&args, &[])
    };
    let mut a = tokio::task::block_in_place(|| spawn(&ma))?;
    // The first reconciler is under way before the second joins.
    wait_for_metrics(
        &ma,
        "the first reconciler to replay records",
        Duration::from_secs(120),
        |t| {
            t.contains("switchyard_replay_records_total{outcome=\"applied\"}")
                && !t.contains("outcome=\"applied\"} 0\n")
        },
    )
    .with_context(|| format!("reconciler log:\n{}", a.log_text()))?;
    let mut b = tokio::task::block_in_place(|| spawn(&mb))?;
    let drained = |path: &str| -> bool {
        std::fs::read_to_string(path).is_ok_and(|t| {
            let lags: Vec<&str> = t
                .lines()
                .filter(|l| l.starts_with("switchyard_replay_consumer_lag{"))
                .collect();
            !lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0"))
        })
    };
    tokio::task::block_in_place(|| {
        poll_until(
            "both reconcilers to hold drained partitions",
            Duration::from_secs(120),
            || {
                for p in [&mut a, &mut b] {
                    if let Some(s) = p.try_wait()? {
                        anyhow::bail!("a reconciler exited with {s}:\n{}", p.log_text());
                    }
                }
                Ok((drained(&ma) && drained(&mb)).then_some(()))
            },
        )
    })
    .with_context(|| {
        format!(
            "first reconciler:\n{}\nsecond reconciler:\n{}",
            a.log_text(),
            b.log_text()
        )
    })?;
    // The lag figures can reach 0 while the last batch is still being applied (or retried
    // after two reconcilers raced on the same keys during the rebalance): wait for the rows.
    let applied = tokio::task::block_in_place(|| {
        poll_until(
            "every row to reach the new database",
            Duration::from_secs(90),
            || {
                for t in &tables {
                    if on(&pair.new, &format!("SELECT count(*) FROM {t}"))? != "1000" {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
    });
    applied.with_context(|| {
        format!(
            "first reconciler:\n{}\nsecond reconciler:\n{}",
            a.log_text(),
            b.log_text()
        )
    })?;
    drop((a, b));
    assert_verified(&pair, &tables.join(",")).await?;
    Ok(())
}

/// A record that is not a retry record goes to the dead-letter topic with the reason in a
/// header; its offset is committed so it does not block the partition; the run says so in
/// its exit code (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_the_reason() -> Result<()> {
    let (_serial, broker, pair) = broker_and_pair(T).await?;
    // The proxy creates the topics at start.
    let proxy = start_proxy(kafka_config(&pair, &broker, OnBrokerFailure::Fail)).await?;
    let producer: FutureProducer = broker.client_config().create()?;
    producer
        .send(
            FutureRecord::to(TOPIC).key("x").payload("{not a record"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let run = replay_kafka(&pair, &broker, &["--format", "json"]).await?;
    ensure!(
        run.code() == Some(1),
        "a dead-lettered record makes the exit code 1:\n{}",
        run.text()
    );
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())?;
    ensure!(report["records_dead"] == 1, "{report}");
    let dead = read_topic(&broker, DEAD, 1).await?;
    ensure!(dead[0].0 == b"{not a record", "{:?}", dead[0]);
    ensure!(
        dead[0]
            .1
            .iter()
            .any(|(k, v)| k == "switchyard-reason" && v.contains("not a retry record")),
        "{:?}",
        dead[0].1
    );
    let run = replay_kafka(&pair, &broker, &["--format", "json"]).await?;
    ensure!(
        run.code() == Some(0),
        "the poison record must not come back:\n{}",
        run.text()
    );
    drop(proxy);
    Ok(())
}
