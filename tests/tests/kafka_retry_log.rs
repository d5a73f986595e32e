//! The Kafka retry log against a real broker (tansu): records confirmed before the primary
//! commits, the broker down while the secondary is down (scenario 10), replay as a consumer
//! group (duplicates after a crash before the offset commit, two reconcilers, a rebalance
//! mid-replay), poison records dead-lettered (those three in `group`), and the errors a user
//! can hit. `origin`: replay waits for each record's origin transaction to end on old;
//! `reverse`: a new-to-old record waits for its origin on new and re-syncs from new into old.

use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::Message;
use std::time::Duration;
use switchyard_core::retry_kafka::{Backend, OnBrokerFailure};
use switchyard_proxy::{ProxyConfig, RunningProxy};
use switchyard_tests::clients::{pgbench_bin, pgbench_clean};
use switchyard_tests::mirror::{
    assert_verified, on, pair_with, pgbench_pair, reconciler, PGBENCH_KEYED,
};
use switchyard_tests::proxy::{proxy_url, run_proxy_to_exit, start_proxy, Pair, DB};
use switchyard_tests::wait::{poll_until, poll_until_async};
use switchyard_tests::{Broker, PgCluster};

#[path = "kafka_retry_log/cutover.rs"]
mod cutover;
#[path = "kafka_retry_log/group.rs"]
mod group;
#[path = "kafka_retry_log/lockstep.rs"]
mod lockstep;
#[path = "kafka_retry_log/origin.rs"]
mod origin;
#[path = "kafka_retry_log/reverse.rs"]
mod reverse;

const TOPIC: &str = "switchyard.retry";

/// One test at a time: each starts a broker, two clusters and a proxy, and the group
/// coordinator's timings (joins, rebalances) are what several tests assert on; on a
/// 2-core machine seven of them at once starve each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const DEAD: &str = "switchyard.retry.dead";

/// The table most tests write.
const T: &str = "CREATE TABLE t (id int PRIMARY KEY, v text)";

/// What most tests start from, holding [`SERIAL`]: a broker, and a pair with `schema`.
async fn broker_and_pair(
    schema: &str,
) -> Result<(tokio::sync::MutexGuard<'static, ()>, Broker, Pair)> {
    let serial = SERIAL.lock().await;
    let broker = tokio::task::spawn_blocking(Broker::start).await??;
    let pair = pair_with(schema).await?;
    Ok((serial, broker, pair))
}

fn kafka_config(pair: &Pair, broker: &Broker, on_failure: OnBrokerFailure) -> ProxyConfig {
    let mut c = pair.config();
    c.retry_log.backend = Backend::Kafka;
    c.retry_log.kafka.brokers = broker.bootstrap();
    c.retry_log.kafka.on_failure = on_failure;
    c.retry_log.kafka.confirm_timeout_ms = 1000;
    c.retry_log.kafka.partitions = 4;
    c
}

/// Flags that point the reconciler's replay at the broker. Every run in these tests is a
/// static member of the group (`--kafka-instance-id`), as a reconciler in a StatefulSet
/// would be: tansu 0.6 sometimes leaves a dynamic member's first join unanswered, and never
/// expires a killed dynamic member's partitions.
/// An in-process proxy with the Kafka retry log (`on_failure`), and a client through it.
async fn kafka_proxy(
    pair: &Pair,
    broker: &Broker,
    on_failure: OnBrokerFailure,
) -> Result<(RunningProxy, tokio_postgres::Client)> {
    let proxy = start_proxy(kafka_config(pair, broker, on_failure)).await?;
    let client = switchyard_tests::proxy::connect_proxy(&proxy).await?;
    Ok((proxy, client))
}

fn kafka_flags(broker: &Broker) -> Vec<String> {
    kafka_flags_as(broker, "r1")
}

fn kafka_flags_as(broker: &Broker, instance: &str) -> Vec<String> {
    vec![
        "--retry-log".into(),
        "kafka".into(),
        "--kafka-brokers".into(),
        broker.bootstrap(),
        "--kafka-instance-id".into(),
        instance.into(),
    ]
}

async fn replay_kafka(
    pair: &Pair,
    broker: &Broker,
    extra: &[&str],
) -> Result<switchyard_tests::reconciler::ReconcilerRun> {
    let flags = kafka_flags(broker);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    reconciler(pair, "replay", &args).await
}

/// Polls the file a reconciler writes its metrics to (`--metrics-file`) until its text
/// satisfies `holds`.
fn wait_for_metrics(
    path: &str,
    what: &str,
    timeout: Duration,
    holds: impl Fn(&str) -> bool,
) -> Result<()> {
    tokio::task::block_in_place(|| {
        poll_until(what, timeout, || {
            Ok(std::fs::read_to_string(path)
                .ok()
                .filter(|t| holds(t))
                .map(|_| ()))
        })
    })
}

fn count(c: &PgCluster, sql: &str) -> Result<i64> {
    on(c, sql)?
        .parse()
        .with_context(|| format!("{sql} did not return a number"))
}

/// Messages in `topic` (all partitions), read by a throwaway consumer group.
async fn read_topic(
    broker: &Broker,
    topic: &str,
    want: usize,
) -> Result<Vec<(Vec<u8>, Vec<(String, String)>)>> {
    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", format!("test-reader-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    while out.len() < want {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .with_context(|| {
                format!("waiting for message {} of {want} in {topic}", out.len() + 1)
            })??;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((m.payload().unwrap_or_default().to_vec(), headers));
    }
    Ok(out)
}

/// The proxy's `/api/status` as JSON.
async fn status(proxy: &RunningProxy) -> Result<serde_json::Value> {
    let addr = proxy.admin_addr().context("admin server")?;
    let (code, body) = switchyard_tests::http::get(addr, "/api/status").await?;
    ensure!(code == 200, "status {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Scenario 7 with Kafka: the secondary killed under pgbench; every record goes to the
/// topic (none to the embedded table), replay from the topic makes both sides equal, and a
/// second replay finds nothing left (lag 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_under_pgbench_records_go_to_kafka_then_replay() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let broker = tokio::task::spawn_blocking(Broker::start).await??;
    let pair = pgbench_pair().await?;
    let _pgbench = pgbench_bin();
    let proxy = start_proxy(kafka_config(&pair, &broker, OnBrokerFailure::Fail)).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    tokio::task::block_in_place(|| pair.new.stop_immediate())?;
    // With the secondary down.
    pgbench_clean(&url, &["-c", "4", "-t", "100", "-M", "prepared", "-n"]).await?;
    let s = status(&proxy).await?;
    let kafka_records = s["mirror"]["retry_log"]["records_kafka"]
        .as_u64()
        .unwrap_or(0);
    ensure!(kafka_records >= 400, "records sent to Kafka: {s}");
    ensure!(s["mirror"]["retry_log"]["backend"] == "kafka", "{s}");
    // pgbench_history has no primary key: its inserts are statement records, which stay in
    // the embedded table by design. Every row record went to Kafka.
    ensure!(
        count(
            &pair.old,
            "SELECT count(*) FROM _switchyard.retry_log WHERE kind <> 'statement'"
        )? == 0,
        "no row record should go to the embedded table while the broker confirms"
    );
    ensure!(
        count(
            &pair.old,
            "SELECT count(*) FROM _switchyard.retry_log WHERE kind = 'statement'"
        )? > 0
    );
    tokio::task::block_in_place(|| pair.new.start())?;
    reconciler(&pair, "recover", &["--min-age-secs", "0"])
        .await?
        .exits(0)?;
    let metrics = tempfile::NamedTempFile::new()?;
    let path = metrics.path().display().to_string();
    let run = replay_kafka(
        &pair,
        &broker,
        &["--metrics-file", &path, "--format", "json"],
    )
    .await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())?;
    ensure!(
        report["records_done"].as_u64().unwrap_or(0) >= kafka_records,
        "replayed fewer records than were sent: {report}"
    );
    let text = std::fs::read_to_string(metrics.path())?;
    ensure!(
        text.contains("switchyard_replay_consumer_lag{partition=")
            && !text
                .lines()
                .any(|l| l.starts_with("switchyard_replay_consumer_lag{") && !l.ends_with(" 0")),
        "every partition should be drained:\n{text}"
    );
    assert_verified(&pair, PGBENCH_KEYED).await?;
    // Offsets were committed: a second run has nothing to do.
    let run = replay_kafka(&pair, &broker, &["--format", "json"])
        .await?
        .exits(0)?;
    let again: serde_json::Value = serde_json::from_str(run.stdout.trim())?;
    ensure!(
        again["records_done"] == 0,
        "records replayed twice: {again}"
    );
    Ok(())
}

/// Scenario 10, fallback flavour: the broker killed while the secondary is down. Writes
/// still commit, their records land in the embedded table in the same transaction, and
/// replay (which also drains the embedded table) makes both sides equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_while_secondary_down_falls_back_to_the_embedded_table() -> Result<()> {
    let (_serial, mut broker, pair) = broker_and_pair(T).await?;
    let (proxy, client) = kafka_proxy(&pair, &broker, OnBrokerFailure::Embedded).await?;
    client
        .execute("INSERT INTO t VALUES (1, 'both up')", &[])
        .await?;
    tokio::task::block_in_place(|| -> Result<()> {
        pair.new.stop_immediate()?;
        broker.kill()
    })?;
    for id in 2..=6 {
        client
            .execute(
                "INSERT INTO t VALUES ($1, 'broker and secondary down')",
                &[&id],
            )
            .await
            .context("a write must commit when its records can go to the embedded table")?;
    }
    ensure!(count(&pair.old, "SELECT count(*) FROM t")? == 6);
    ensure!(
        count(
            &pair.old,
            "SELECT count(*) FROM _switchyard.retry_log WHERE kind = 'row'"
        )? == 5,
        "each committed write has its record in the embedded table"
    );
    let s = status(&proxy).await?;
    ensure!(s["mirror"]["retry_log"]["records_fallback"] == 5, "{s}");
    ensure!(
        s["mirror"]["retry_log"]["kafka_last_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not confirm") || e.contains("refused")),
        "{s}"
    );
    tokio::task::block_in_place(|| -> Result<()> {
        pair.new.start()?;
        broker.start_again()
    })?;
    let run = replay_kafka(&pair, &broker, &[]).await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    ensure!(count(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")? == 0);
    assert_verified(&pair, "t").await?;
    Ok(())
}

/// Scenario 10, strict flavour (`on_failure = "fail"`): with the broker frozen (SIGSTOP)
/// and the secondary down, the client's transaction fails with a clear error after the
/// confirm timeout and nothing is committed; the session keeps working, and once the
/// broker is back the same write commits with its record in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_while_secondary_down_fails_the_transaction_when_configured() -> Result<()> {
    let (_serial, mut broker, pair) = broker_and_pair(T).await?;
    let (proxy, client) = kafka_proxy(&pair, &broker, OnBrokerFailure::Fail).await?;
    tokio::task::block_in_place(|| pair.new.stop_immediate())?;
    broker.pause()?;
    let err = client
        .execute(
            "INSERT INTO t VALUES (1, 'must not commit without a record')",
            &[],
        )
        .await
        .err()
        .context("the write must fail while no backend can take its record")?;
    let db = err.as_db_error().context("a server error")?;
    ensure!(db.code().code() == "XX000", "{db:?}");
    ensure!(
        db.message()
            .contains("could not be recorded in the retry log"),
        "{db:?}"
    );
    ensure!(
        db.detail()
            .is_some_and(|d| d.contains("did not confirm") && d.contains("on_failure")),
        "{db:?}"
    );
    ensure!(
        count(&pair.old, "SELECT count(*) FROM t")? == 0,
        "nothing committed"
    );
    ensure!(count(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")? == 0);
    let s = status(&proxy).await?;
    ensure!(s["mirror"]["retry_log"]["commits_refused"] == 1, "{s}");
    broker.resume()?;
    // The same session goes on: the broker confirms again, the write commits.
    poll_until_async(
        "a write to commit once the broker is back",
        Duration::from_secs(30),
        || async {
            Ok(client
                .execute(
                    "INSERT INTO t VALUES (1, 'after the broker came back')",
                    &[],
                )
                .await
                .ok())
        },
    )
    .await?;
    let records = read_topic(&broker, TOPIC, 1).await?;
    let r: serde_json::Value = serde_json::from_slice(&records[0].0)?;
    ensure!(r["kind"] == "row" && r["key"]["id"] == 1, "{r}");
    tokio::task::block_in_place(|| pair.new.start())?;
    replay_kafka(&pair, &broker, &[]).await?.exits(0)?;
    assert_verified(&pair, "t").await?;
    Ok(())
}

/// Errors a user can hit: no broker at the address (the proxy refuses to start and says
/// which broker), the Kafka backend without brokers (a config error naming the key), and a
/// reconciler pointed at no broker (exit 2, clear message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_missing_brokers_are_clear_errors() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let (_refusing, port) = switchyard_tests::refusing_port()?;
    let nobody = format!("127.0.0.1:{port}");
    let (status, out) = tokio::task::block_in_place(|| {
        run_proxy_to_exit(
            &[
                "--old",
                &old,
                "--new",
                &new,
                "--retry-log",
                "kafka",
                "--kafka-brokers",
                &nobody,
            ],
            &[],
        )
    })?;
    ensure!(!status.success(), "{out}");
    ensure!(
        out.contains("Kafka retry log") && out.contains(&nobody),
        "{out}"
    );
    ensure!(
        !out.contains("postgres://postgres:"),
        "no credentials in errors: {out}"
    );
    let (status, out) = tokio::task::block_in_place(|| {
        run_proxy_to_exit(&["--old", &old, "--new", &new, "--retry-log", "kafka"], &[])
    })?;
    ensure!(
        !status.success() && out.contains("retry_log.kafka.brokers"),
        "{out}"
    );
    let run = reconciler(
        &pair,
        "replay",
        &["--retry-log", "kafka", "--kafka-brokers", &nobody],
    )
    .await?
    .exits(2)?;
    ensure!(run.stderr.contains(&nobody), "{}", run.text());
    Ok(())
}
