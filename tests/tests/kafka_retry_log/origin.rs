//! Replay waits for a record's origin transaction (finding 8 of issue #20): the proxy
//! confirms a record in Kafka before old's COMMIT, so the reconciler can read it while the
//! rows it names are still invisible on old. These tests play the proxy's part by hand: a
//! transaction held open on old, and its record published to the topic.

use super::{broker_and_pair, kafka_flags, replay_kafka, wait_for_metrics, T, TOPIC};
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
use switchyard_core::direction::Direction;
use switchyard_core::retry::{Origin, RetryRecord};
use switchyard_core::retry_kafka::{self, KafkaSettings};
use switchyard_tests::mirror::{assert_verified, current_xid, on, open_transaction};
use switchyard_tests::proxy::{Pair, DB};
use switchyard_tests::reconciler::{self, ReconcilerProcess};
use switchyard_tests::Broker;

/// The reconcilers' consumer group (the default).
const GROUP: &str = "switchyard-reconciler";

/// [`broker_and_pair`] with the retry topics made, as a proxy would at its start, for tests
/// that play the proxy's part.
pub(super) async fn broker_pair_and_topics(
    schema: &str,
) -> Result<(tokio::sync::MutexGuard<'static, ()>, Broker, Pair)> {
    let (serial, broker, pair) = broker_and_pair(schema).await?;
    create_topics(&broker).await?;
    Ok((serial, broker, pair))
}

/// The retry topics, as the proxy creates them at start.
async fn create_topics(broker: &Broker) -> Result<()> {
    let settings = KafkaSettings {
        brokers: broker.bootstrap(),
        partitions: 4,
        ..KafkaSettings::default()
    };
    retry_kafka::ensure_topics(&settings, Duration::from_secs(10)).await?;
    Ok(())
}

/// A row record for `public.<table>` key `id`, as the proxy writes it.
fn row_record(table: &str, id: i32, xid: Option<&str>) -> RetryRecord {
    row_record_dir(Direction::OldToNew, table, id, xid)
}

/// A row record of `direction`; `xid` is a transaction of that direction's primary.
pub(super) fn row_record_dir(
    direction: Direction,
    table: &str,
    id: i32,
    xid: Option<&str>,
) -> RetryRecord {
    let origin = Origin {
        ordinal: 1,
        ..Origin::new(direction, "test", xid.map(str::to_string))
    };
    reconciler::row_record(origin, table, id, "the new database did not take it")
}

/// Publishes `r` to `partition` of the retry topic; its offset.
pub(super) async fn publish(broker: &Broker, r: &RetryRecord, partition: i32) -> Result<i64> {
    let producer: FutureProducer = broker.client_config().create()?;
    let payload = retry_kafka::encode(r)?;
    let delivered = producer
        .send(
            FutureRecord::to(TOPIC)
                .key(retry_kafka::message_key(r))
                .payload(&payload)
                .partition(partition),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("publishing a retry record")?;
    ensure!(delivered.partition == partition, "{delivered:?}");
    Ok(delivered.offset)
}

/// A client that reads the group's committed offsets (it never joins the group).
fn offsets_reader(broker: &Broker) -> Result<BaseConsumer> {
    Ok(broker.client_config().set("group.id", GROUP).create()?)
}

/// The group's committed offset of `partition` (None before the first commit).
fn committed(reader: &BaseConsumer, partition: i32) -> Result<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, partition);
    let got = tokio::task::block_in_place(|| reader.committed_offsets(tpl, Duration::from_secs(5)))
        .context("reading the group's committed offsets")?;
    Ok(got
        .find_partition(TOPIC, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
}

/// Inserts through its own committed transaction on old; the transaction's id.
async fn committed_insert(pair: &Pair, sql: &str) -> Result<String> {
    let c = pair.old.connect(DB).await?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute(sql).await?;
    let xid = current_xid(&c).await?;
    c.batch_execute("COMMIT").await?;
    Ok(xid)
}

/// `table` on both sides, row by row.
/// `switchyard-reconciler replay --follow` against the pair and the broker, writing its
/// metrics to `metrics`, with debug logs (the tests count its origin re-checks).
pub(super) fn spawn_follow(
    pair: &Pair,
    broker: &Broker,
    metrics: &str,
    extra: &[&str],
) -> Result<ReconcilerProcess> {
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let flags = kafka_flags(broker);
    let mut args: Vec<&str> = vec!["replay", "--follow"];
    args.extend_from_slice(extra);
    args.extend(["--old", &old, "--new", &new, "--metrics-file", metrics]);
    args.extend(flags.iter().map(String::as_str));
    tokio::task::block_in_place(|| {
        ReconcilerProcess::spawn(&args, &[("SWITCHYARD_LOG", "switchyard_reconciler=debug")])
    })
}

pub(super) fn same_rows(pair: &Pair, table: &str) -> Result<()> {
    let sql = format!("SELECT id, v FROM {table} ORDER BY id");
    let (old, new) = (on(&pair.old, &sql)?, on(&pair.new, &sql)?);
    ensure!(old == new, "{table} differs:\nold:\n{old}\nnew:\n{new}");
    Ok(())
}

/// The regression test of the finding: a record whose origin is still open on old is
/// neither applied nor committed, however often replay looks, while a committed record in
/// another partition goes through meanwhile. Once the origin commits, its row reaches new
/// and the offset moves. Against the old replay the offset is committed at once (the row
/// read as absent) and the row never reaches new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_waits_for_the_origin_transaction_to_commit() -> Result<()> {
    let (_serial, broker, pair) = broker_pair_and_topics(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text)",
    )
    .await?;
    // The origin: open on old, its row invisible to any other session until it commits.
    let (origin, xid) = open_transaction(
        &pair.old,
        "INSERT INTO t VALUES (1, 'from the open transaction')",
    )
    .await?;
    let held_at = publish(&broker, &row_record("t", 1, Some(&xid)), 0).await?;
    // Behind it in its partition, and in another partition: records of committed origins.
    let behind_xid = committed_insert(&pair, "INSERT INTO u VALUES (2, 'behind it')").await?;
    let behind_at = publish(&broker, &row_record("u", 2, Some(&behind_xid)), 0).await?;
    let other_xid = committed_insert(&pair, "INSERT INTO u VALUES (1, 'elsewhere')").await?;
    let other_at = publish(&broker, &row_record("u", 1, Some(&other_xid)), 1).await?;

    // --batch 1: the partition holds a batch's worth as soon as its record waits, so it is
    // paused, and must be resumed once the origin commits.
    let dir = tempfile::tempdir()?;
    let metrics = dir.path().join("replay.prom").display().to_string();
    let mut replay = spawn_follow(&pair, &broker, &metrics, &["--batch", "1"])?;
    let offsets = offsets_reader(&broker)?;
    let rechecks = |log: &str| log.matches("Origin transaction still in progress").count();
    // Several lookups of the open origin, the other partition's record applied meanwhile.
    replay.poll_while_running("replay to hold the record of the open transaction", Duration::from_secs(120), |replay| {
                let at = committed(&offsets, 0)?;
                ensure!(
                    at.is_none_or(|o| o <= held_at),
                    "partition 0 committed up to {at:?} while the record at {held_at} waits for its origin transaction\n{}",
                    replay.log_text()
                );
                ensure!(
                    on(&pair.new, "SELECT count(*) FROM t")? == "0",
                    "t changed on new while its origin transaction is open"
                );
                let waiting = std::fs::read_to_string(&metrics)
                    .is_ok_and(|m| m.contains("switchyard_replay_waiting_for_origin 1\n"));
                let other_done = on(&pair.new, "SELECT v FROM u WHERE id = 1")? == "elsewhere"
                    && committed(&offsets, 1)? == Some(other_at + 1);
                Ok((waiting && other_done && rechecks(&replay.log_text()) >= 3).then_some(()))
    })?;
    ensure!(
        committed(&offsets, 0)?.is_none_or(|o| o <= held_at),
        "partition 0's offset moved past the waiting record"
    );
    origin.batch_execute("COMMIT").await?;
    replay
        .poll_while_running(
            "the committed row and the offsets behind it",
            Duration::from_secs(60),
            |_| {
                let arrived = on(&pair.new, "SELECT count(*) FROM t")? == "1"
                    && on(&pair.new, "SELECT count(*) FROM u")? == "2";
                Ok((arrived && committed(&offsets, 0)? == Some(behind_at + 1)).then_some(()))
            },
        )
        .with_context(|| replay.log_text())?;
    same_rows(&pair, "t")?;
    same_rows(&pair, "u")?;
    assert_verified(&pair, "t,u").await?;
    wait_for_metrics(
        &metrics,
        "the waiting gauge back to 0",
        Duration::from_secs(30),
        |m| m.contains("switchyard_replay_waiting_for_origin 0\n"),
    )?;
    Ok(())
}

/// A record whose origin rolled back is dropped: nothing changes on new (which has a row
/// that a re-sync of that key would delete), the offset is committed, and the run counts it.
/// Records whose origin cannot be checked are applied: one naming a transaction id old
/// never handed out (which makes old refuse the batch's lookup) and one naming none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_drops_records_whose_origin_rolled_back() -> Result<()> {
    let (_serial, broker, pair) = broker_pair_and_topics(T).await?;
    on(&pair.new, "INSERT INTO t VALUES (1, 'only on new')")?;
    let (origin, xid) =
        open_transaction(&pair.old, "INSERT INTO t VALUES (1, 'rolled back')").await?;
    publish(&broker, &row_record("t", 1, Some(&xid)), 0).await?;
    origin.batch_execute("ROLLBACK").await?;
    on(&pair.old, "INSERT INTO t VALUES (2, 'two'), (3, 'three')")?;
    publish(&broker, &row_record("t", 2, Some("999999999")), 0).await?;
    let at = publish(&broker, &row_record("t", 3, None), 0).await?;
    let dir = tempfile::tempdir()?;
    let metrics = dir.path().join("replay.prom").display().to_string();
    let run = replay_kafka(
        &pair,
        &broker,
        &["--format", "json", "--metrics-file", &metrics],
    )
    .await?
    .exits(0)?;
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("the JSON report:\n{}", run.text()))?;
    ensure!(
        report["records_dropped_aborted"] == 1
            && report["records_done"] == 2
            && report["records_without_xid"] == 1,
        "the rolled-back origin's record must be dropped, the two others applied: {report}"
    );
    let text = std::fs::read_to_string(&metrics)?;
    ensure!(
        text.contains("switchyard_replay_records_total{outcome=\"dropped_aborted\"} 1\n"),
        "{text}"
    );
    ensure!(
        on(&pair.new, "SELECT v FROM t WHERE id = 1")? == "only on new",
        "the record of a rolled-back transaction changed new"
    );
    ensure!(on(&pair.old, "SELECT count(*) FROM t WHERE id = 1")? == "0");
    ensure!(
        on(
            &pair.new,
            "SELECT string_agg(v, ',' ORDER BY id) FROM t WHERE id > 1"
        )? == "two,three",
        "the records without a checkable origin are applied"
    );
    let offsets = offsets_reader(&broker)?;
    ensure!(
        committed(&offsets, 0)? == Some(at + 1),
        "partition 0 committed past the three records"
    );
    Ok(())
}
