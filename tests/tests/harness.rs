//! Tests of the test harness itself: clusters, auth, crash/restart, cleanup, ports and the broker.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use switchyard_tests::ports::accepts_connections;
use switchyard_tests::{free_port, Auth, Broker, PgCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[test]
fn free_ports_are_distinct_and_bindable() {
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let port = free_port();
        assert!(port >= 20_000, "port {port} below the range");
        assert!(seen.insert(port), "port {port} handed out twice");
    }
    let port = free_port();
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

#[tokio::test]
async fn two_clusters_run_side_by_side_and_keep_their_rows() -> Result<()> {
    let started = Instant::now();
    let a = PgCluster::builder().start()?;
    eprintln!("cluster start took {:?}", started.elapsed());
    let b = PgCluster::builder().start()?;
    assert_ne!(a.port(), b.port());
    assert!(a.is_running() && b.is_running());
    assert_eq!(
        a.url("db1"),
        format!("postgres://postgres@127.0.0.1:{}/db1", a.port())
    );

    a.create_database("app")?;
    a.psql("app", "CREATE TABLE t (id int PRIMARY KEY, name text)")?;
    let client = a.connect("app").await?;
    client
        .execute("INSERT INTO t VALUES ($1, $2)", &[&1i32, &"one"])
        .await?;
    let row = client
        .query_one("SELECT name FROM t WHERE id = 1", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "one");
    assert_eq!(a.psql("app", "SELECT id, name FROM t")?, "1|one");

    // The other cluster has no such database: psql's error carries its stderr.
    let err = b
        .psql("app", "SELECT 1")
        .expect_err("database app exists on b");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    // And a failing statement fails (ON_ERROR_STOP).
    let err = a.psql("app", "SELEC 1").expect_err("syntax error accepted");
    assert!(format!("{err:#}").contains("syntax error"), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn durable_cluster_keeps_committed_rows_across_kill() -> Result<()> {
    let pg = PgCluster::builder().durable(true).start()?;
    assert_eq!(pg.psql("postgres", "SHOW fsync")?, "on");
    let client = pg.connect("postgres").await?;
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('committed')")
        .await?;
    drop(client);

    let started = Instant::now();
    pg.kill()?;
    eprintln!("kill took {:?}", started.elapsed());
    assert!(!pg.is_running());
    assert!(!accepts_connections(pg.port()));

    let started = Instant::now();
    pg.start()?;
    eprintln!(
        "restart after kill (crash recovery) took {:?}",
        started.elapsed()
    );
    assert!(pg.is_running());
    let client = pg.connect("postgres").await?;
    let row = client.query_one("SELECT v FROM kept", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "committed");

    // A clean stop and start works too.
    pg.stop_fast()?;
    assert!(!pg.is_running());
    pg.start()?;
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM kept")?, "1");
    pg.stop_immediate()?;
    assert!(!pg.is_running());
    Ok(())
}

async fn check_password_auth(auth: Auth, stored_prefix: &str) -> Result<()> {
    let pg = PgCluster::builder().auth(auth).start()?;
    assert_eq!(pg.password(), Some(PgCluster::PASSWORD));
    assert_eq!(
        pg.url("postgres"),
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            PgCluster::PASSWORD,
            pg.port()
        )
    );
    let stored = pg.psql(
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'",
    )?;
    assert!(stored.starts_with(stored_prefix), "{stored}");

    let mut wrong = pg.config("postgres");
    wrong.password("not-the-password");
    let err = wrong
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("a wrong password was accepted");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");

    let mut none = pg.config("postgres");
    none.password("");
    assert!(none.connect(NoTls).await.is_err());

    // Right password, via the URL and via connect().
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), NoTls).await?;
    tokio::spawn(connection);
    let row = client.query_one("SELECT current_user", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "postgres");
    let client = pg.connect("postgres").await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

#[tokio::test]
async fn md5_auth_rejects_wrong_password() -> Result<()> {
    check_password_auth(Auth::Md5, "md5").await
}

#[tokio::test]
async fn scram_auth_rejects_wrong_password() -> Result<()> {
    check_password_auth(Auth::Scram, "SCRAM-SHA-256$").await
}

#[tokio::test]
async fn settings_are_applied() -> Result<()> {
    let default = PgCluster::builder().start()?;
    assert_eq!(
        default.psql("postgres", "SHOW max_prepared_transactions")?,
        "10"
    );
    assert_eq!(default.psql("postgres", "SHOW fsync")?, "off");
    assert_eq!(
        default.psql("postgres", "SHOW listen_addresses")?,
        "127.0.0.1"
    );

    let custom = PgCluster::builder()
        .max_prepared_transactions(7)
        .setting("work_mem", "7MB")
        .setting("application_name", "it's quoted")
        .start()?;
    let client = custom.connect("postgres").await?;
    let row = client
        .query_one("SHOW max_prepared_transactions", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "7");
    assert_eq!(custom.psql("postgres", "SHOW work_mem")?, "7MB");
    // Two-phase commit works with max_prepared_transactions > 0.
    custom.psql("postgres", "CREATE TABLE p (id int)")?;
    client
        .batch_execute("BEGIN; INSERT INTO p VALUES (1); PREPARE TRANSACTION 'tx1'")
        .await?;
    client.batch_execute("COMMIT PREPARED 'tx1'").await?;
    assert_eq!(custom.psql("postgres", "SELECT count(*) FROM p")?, "1");
    Ok(())
}

#[test]
fn bad_setting_fails_with_the_log_tail() {
    let err = PgCluster::builder()
        .setting("shared_buffers", "lots")
        .start()
        .expect_err("a bad setting started");
    let text = format!("{err:#}");
    assert!(text.contains("shared_buffers"), "{text}");
    assert!(text.contains("tail of"), "{text}");
}

#[test]
fn dir_is_removed_after_drop_and_after_a_panic() -> Result<()> {
    let pg = PgCluster::builder().start()?;
    let dir = pg.dir().to_path_buf();
    let port = pg.port();
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg.socket_dir().starts_with(&dir));
    drop(pg);
    if !switchyard_tests::keep_dirs() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    assert!(!accepts_connections(port));

    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let pg = PgCluster::builder().start().expect("start");
        tx.send((pg.dir().to_path_buf(), pg.port())).expect("send");
        panic!("deliberate panic with a live cluster");
    })
    .join();
    assert!(joined.is_err(), "the thread should have panicked");
    let (dir, port) = rx.recv().context("the thread sent nothing")?;
    if !switchyard_tests::keep_dirs() {
        assert!(
            !dir.exists(),
            "{} still exists after a panic",
            dir.display()
        );
    }
    assert!(!accepts_connections(port));
    Ok(())
}

#[tokio::test]
async fn broker_consumer_group_resumes_from_committed_offset() -> Result<()> {
    let started = Instant::now();
    let broker = Broker::start()?;
    eprintln!("broker start took {:?}", started.elapsed());
    let topic = "harness-events";
    broker.create_topic(topic, 1).await?;
    assert!(
        broker.create_topic(topic, 1).await.is_err(),
        "duplicate topic accepted"
    );

    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()?;
    for i in 0..100 {
        let payload = format!("msg-{i}");
        let key = i.to_string();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .with_context(|| format!("producing message {i}"))?;
    }

    let consumer = group_consumer(&broker, "harness-group")?;
    consumer.subscribe(&[topic])?;
    for expected in 0..100i64 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("timed out waiting for a message")??;
        assert_eq!(msg.offset(), expected);
        assert_eq!(msg.payload(), Some(format!("msg-{expected}").as_bytes()));
        if expected == 49 {
            // Commits offset 50: the next message to read.
            consumer.commit_message(&msg, CommitMode::Sync)?;
        }
    }
    drop(consumer);

    let resumed = group_consumer(&broker, "harness-group")?;
    resumed.subscribe(&[topic])?;
    let msg = tokio::time::timeout(Duration::from_secs(30), resumed.recv())
        .await
        .context("timed out waiting for the resumed consumer")??;
    assert_eq!(msg.offset(), 50);
    assert_eq!(msg.payload(), Some(&b"msg-50"[..]));
    Ok(())
}

fn group_consumer(broker: &Broker, group: &str) -> Result<StreamConsumer> {
    Ok(broker
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?)
}

#[tokio::test]
async fn broker_restart_keeps_the_address_and_loses_topics() -> Result<()> {
    let mut broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    broker.create_topic("before-restart", 1).await?;
    let started = Instant::now();
    broker.restart()?;
    eprintln!("broker restart took {:?}", started.elapsed());
    assert_eq!(broker.bootstrap(), bootstrap);
    // In-memory storage: the topic is gone, so creating it again succeeds.
    broker.create_topic("before-restart", 1).await?;
    broker.kill()?;
    assert!(!broker.is_running());
    assert!(!accepts_connections(broker.port()));
    broker.start_again()?;
    assert!(broker.is_running());
    Ok(())
}
