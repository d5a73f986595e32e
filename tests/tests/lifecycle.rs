//! The proxy's own limits and lifecycle: graceful shutdown, connection limit, idle timeout,
//! the admin endpoints, a database that is down, and the real binary's flags and signals.

use std::time::{Duration, Instant};
use switchyard_tests::clients::psql_value;
use switchyard_tests::http;
use switchyard_tests::mirror::{proxied, Proxied};
use switchyard_tests::proxy::{
    batch_fails, connect_proxy, run_proxy_to_exit, start_proxy, Pair, ProxyProcess, DB,
};
use switchyard_tests::wait::poll_until_async;
use switchyard_tests::{Auth, PgCluster};
use tokio_postgres::error::SqlState;

fn db_code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// SIGTERM semantics: stop accepting, close idle sessions with 57P01, let a transaction in
/// progress commit, then close it. With sessions on the proxy's runtime (one worker
/// thread) and on three session threads of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_transactions_finish() -> anyhow::Result<()> {
    for threads in [1, 3] {
        graceful_shutdown_with(threads)
            .await
            .map_err(|e| e.context(format!("worker_threads = {threads}")))?;
    }
    Ok(())
}

async fn graceful_shutdown_with(worker_threads: usize) -> anyhow::Result<()> {
    let pair = Pair::start()?;
    pair.old.psql(DB, "CREATE TABLE t (id int PRIMARY KEY)")?;
    let mut config = pair.config();
    config.shutdown_timeout_secs = 30;
    config.worker_threads = worker_threads;
    let proxy = start_proxy(config).await?;
    let addr = proxy.listen_addr();
    let idle = connect_proxy(&proxy).await?;
    let busy = connect_proxy(&proxy).await?;
    // More sessions than threads, all open at once (each thread serves several).
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(connect_proxy(&proxy).await?);
    }
    let mut pids = std::collections::HashSet::new();
    for c in &others {
        pids.insert(
            c.query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get::<_, i32>(0),
        );
    }
    assert_eq!(pids.len(), 4, "one backend per session");
    drop(others);
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await?;

    let stopping = tokio::spawn(proxy.shutdown());
    // The idle session is told why it is closed.
    let e = poll_until_async(
        "the idle session to be closed",
        Duration::from_secs(10),
        || async { Ok(idle.query_one("SELECT 1", &[]).await.err()) },
    )
    .await?;
    assert!(
        e.is_closed() || db_code(&e).as_deref() == Some("57P01"),
        "{e:?}"
    );
    // New clients are refused.
    poll_until_async("the listener to close", Duration::from_secs(10), || async {
        Ok(tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(()))
    })
    .await?;
    // The transaction in progress can still finish.
    busy.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await?;
    tokio::time::timeout(Duration::from_secs(10), stopping).await??;
    assert_eq!(pair.old.psql(DB, "SELECT count(*) FROM t")?, "2");
    Ok(())
}

/// At the shutdown deadline, sessions still in a transaction are cut; PostgreSQL rolls the
/// transaction back, nothing half-done is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_cuts_open_transactions() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    pair.old.psql(DB, "CREATE TABLE t (id int PRIMARY KEY)")?;
    let mut config = pair.config();
    config.shutdown_timeout_secs = 1;
    let proxy = start_proxy(config).await?;
    let busy = connect_proxy(&proxy).await?;
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await?;
    let started = Instant::now();
    proxy.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(busy.batch_execute("COMMIT").await.is_err());
    switchyard_tests::wait::poll_until(
        "the backend to roll back",
        Duration::from_secs(10),
        || {
            Ok((pair.old.psql(DB, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in%'")? == "0").then_some(()))
        },
    )?;
    assert_eq!(pair.old.psql(DB, "SELECT count(*) FROM t")?, "0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_idle_timeout() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    let mut config = pair.config();
    config.max_client_connections = 2;
    config.idle_timeout_secs = 1;
    let proxy = start_proxy(config).await?;
    let a = connect_proxy(&proxy).await?;
    let b = connect_proxy(&proxy).await?;
    let e = connect_proxy(&proxy)
        .await
        .expect_err("third client refused");
    let db = e.downcast_ref::<tokio_postgres::Error>().and_then(db_code);
    assert_eq!(db.as_deref(), Some("53300"), "{e:?}");

    // A statement longer than the idle timeout is not idleness.
    b.batch_execute("SELECT pg_sleep(1.5)").await?;
    b.batch_execute("SELECT 1").await?;
    // An idle session is closed with PostgreSQL's idle-session code, and its slot freed.
    let e = poll_until_async(
        "the idle session to be closed",
        Duration::from_secs(10),
        || async { Ok(a.is_closed().then_some(())) },
    )
    .await;
    assert!(e.is_ok(), "idle session was not closed");
    let c = connect_proxy(&proxy).await?;
    c.batch_execute("SELECT 1").await?;
    proxy.shutdown().await;
    Ok(())
}

/// The admin surface, and scenario "new being down never fails a client".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_new_database_down() -> anyhow::Result<()> {
    let Proxied { proxy, pair } = proxied("").await?;
    let admin = proxy.admin_addr().expect("admin server");
    let c = connect_proxy(&proxy).await?;
    c.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT * FROM t")
        .await?;
    batch_fails(&c, "SELECT 1/0", &SqlState::DIVISION_BY_ZERO).await?;

    let (status, body) = http::get(admin, "/healthz").await?;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, metrics) = http::get(admin, "/metrics").await?;
    assert_eq!(status, 200);
    for needle in [
        "switchyard_statements_total{class=\"ddl\"}",
        "switchyard_statements_total{class=\"write\"}",
        "switchyard_statements_total{class=\"read\"}",
        "switchyard_server_errors_total{sqlstate=\"22012\"}",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_client_connections",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let status =
        poll_until_async("both backends checked", Duration::from_secs(10), || async {
            let (_, body) = http::get(admin, "/api/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            Ok((v["backends"]["new"]["reachable"] == true
                && v["backends"]["old"]["reachable"] == true)
                .then_some(v))
        })
        .await?;
    assert_eq!(status["sessions"]["active"], 1);
    assert!(status["version"].is_string());

    // New goes down: clients carry on; the status says so.
    pair.new.stop_immediate()?;
    c.batch_execute("INSERT INTO t VALUES (2)").await?;
    let fresh = connect_proxy(&proxy).await?;
    assert_eq!(
        fresh
            .query_one("SELECT count(*) FROM t", &[])
            .await?
            .get::<_, i64>(0),
        2
    );
    let status = poll_until_async(
        "new reported unreachable",
        Duration::from_secs(10),
        || async {
            let (_, body) = http::get(admin, "/api/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            Ok((v["backends"]["new"]["reachable"] == false).then_some(v))
        },
    )
    .await?;
    assert!(status["backends"]["new"]["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("new database"));
    let (_, metrics) = http::get(admin, "/metrics").await?;
    // Metrics are process-wide and other tests' proxies run beside this one, so only the
    // gauge's presence is checked here; its value per proxy is in /api/status above.
    assert!(
        metrics.contains("switchyard_backend_up{role=\"new\"}"),
        "{metrics}"
    );

    // A session's server process dies without a word (SIGKILL): its client is told what
    // happened rather than seeing a bare EOF.
    let mut raw = switchyard_tests::wire::Wire::connect(proxy.listen_addr()).await?;
    raw.send_startup(
        3,
        0,
        &[
            ("user", PgCluster::USER),
            ("database", DB),
            ("application_name", "doomed"),
        ],
    )
    .await?;
    raw.read_until_ready().await?;
    let pid: i32 = pair
        .old
        .psql(
            DB,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'doomed'",
        )?
        .parse()?;
    switchyard_tests::process::send_signal(pid, nix::sys::signal::Signal::SIGKILL)?;
    let got = raw.read_until_closed().await?;
    let e = switchyard_tests::wire::first_error(&got).expect("an error before the close");
    assert_eq!(e.code(), "08006");
    assert!(
        e.message()
            .contains("connection to the old database was lost"),
        "{}",
        e.message()
    );
    pair.old.kill()?;
    // A new client gets a clear connection error, not a hang.
    let e = connect_proxy(&proxy).await.expect_err("old down");
    let text = format!("{e:?}");
    assert!(
        text.contains("08006") || text.contains("cannot connect to the old database"),
        "{text}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// The real binary: flags alone, SIGTERM, credentials kept out of logs, bad config exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_flags_signals_and_bad_config() -> anyhow::Result<()> {
    let pair = Pair::start_with(PgCluster::builder().auth(Auth::Scram), PgCluster::builder())?;
    let old = pair.old.url(DB);
    let new = pair.new.url(DB);
    // A stray SWITCHYARD_* variable (other tools share the prefix) is a warning, not fatal.
    let mut p = ProxyProcess::spawn(
        &["--old", &old, "--new", &new],
        &[("SWITCHYARD_NOT_A_SETTING", "1")],
    )?;
    let url = format!("postgres://postgres@127.0.0.1:{}/{DB}", p.port);
    assert_eq!(psql_value(&url, "SELECT 40 + 2").await?, "42");
    let (code, _) = http::get(format!("127.0.0.1:{}", p.admin_port).parse()?, "/healthz").await?;
    assert_eq!(code, 200);
    let status = p.terminate(Duration::from_secs(20))?;
    assert!(status.success(), "exit status {status}");
    let log = p.log_text();
    assert!(log.contains("No users are configured"), "{log}");
    assert!(
        log.contains("SWITCHYARD_NOT_A_SETTING") && log.contains("names no setting"),
        "{log}"
    );
    assert!(
        !log.contains(PgCluster::PASSWORD),
        "password leaked into the log:\n{log}"
    );

    let (status, text) = run_proxy_to_exit(
        &[
            "--old",
            "postgres://u@h/db",
            "--new",
            "mysql://x",
            "--listen",
            "nowhere",
        ],
        &[("SWITCHYARD_MAX_CLIENT_CONNECTIONS", "0")],
    )?;
    assert_eq!(status.code(), Some(2), "{text}");
    for needle in [
        "new:",
        "listen:",
        "max_client_connections:",
        "SWITCHYARD_MAX_CLIENT_CONNECTIONS",
        "flag --listen",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let (status, text) = run_proxy_to_exit(&["--help"], &[])?;
    assert!(
        status.success() && text.contains("--old") && text.contains("SWITCHYARD_"),
        "{text}"
    );
    let (status, text) = run_proxy_to_exit(
        &[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h/db",
            "--config",
            "/nonexistent.toml",
        ],
        &[],
    )?;
    assert_eq!(status.code(), Some(2));
    assert!(text.contains("cannot read"), "{text}");
    Ok(())
}

/// `--worker-threads 1` runs the proxy on a single-threaded runtime: same behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_on_a_single_threaded_runtime() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let mut p = ProxyProcess::spawn(
        &["--old", &old, "--new", &new, "--worker-threads", "1"],
        &[],
    )?;
    let url = format!("postgres://postgres@127.0.0.1:{}/{DB}", p.port);
    assert_eq!(
        psql_value(&url, "SELECT count(*) FROM generate_series(1, 1000)").await?,
        "1000"
    );
    assert!(p.terminate(Duration::from_secs(20))?.success());
    Ok(())
}
