//! Real clients through the in-process proxy (scenarios 14, 17, 18): psql, pgbench in all
//! three query modes, psycopg 3 and asyncpg, cancel requests and statement_timeout, and
//! LISTEN/NOTIFY. Each test checks what the clients saw and what ended up on the old cluster.
//!
//! `SWITCHYARD_LOG=debug` (an `EnvFilter` directive) shows the proxy's log in the test output.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use switchyard_proxy::protocol::startup::StartupRequest;
use switchyard_proxy::RunningProxy;
use switchyard_tests::clients::{
    pgbench_bin, psql_bin, python_bin, python_script, run_client, ClientOutput,
};
use switchyard_tests::mirror::init_tracing;
use switchyard_tests::proxy::{connect_proxy, proxy_config, proxy_url, start_proxy, Pair, DB};
use switchyard_tests::wait::poll_until_async;
use switchyard_tests::wire::{first_error, Wire};
use switchyard_tests::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Notification};

/// A fresh pair of clusters and a proxy in front of the old one.
struct Setup {
    pair: Pair,
    proxy: RunningProxy,
    url: String,
}

async fn setup() -> Result<Setup> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let proxy = start_proxy(pair.config()).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    Ok(Setup { pair, proxy, url })
}

/// `sql` on the old cluster directly (psql over its unix socket). `block_in_place` lets the
/// runtime move its other tasks (the proxy) off this worker while psql runs.
async fn old_psql(pair: &Pair, sql: &str) -> Result<String> {
    let port = pair.old.port();
    let sql = sql.to_string();
    tokio::task::block_in_place(|| pair.old.psql(DB, &sql))
        .with_context(|| format!("on the old cluster (port {port}): {sql}"))
}

// ------------------------------------------------------------------------------------------
// psql
// ------------------------------------------------------------------------------------------

/// `{dir}` is replaced by the test's temporary directory (`\copy` does not interpolate
/// psql variables).
const PSQL_SCRIPT: &str = r#"-- One Query message with several statements.
CREATE TABLE items (id int PRIMARY KEY, name text, qty int) \; INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20) \; INSERT INTO items VALUES (3, 'three', 30) \; SELECT count(*) AS multi FROM items;
SELECT 'a' AS x \; SELECT 'b' AS y;
-- Savepoints.
BEGIN;
INSERT INTO items VALUES (4, 'four', 40);
SAVEPOINT sp1;
INSERT INTO items VALUES (5, 'five', 50);
ROLLBACK TO SAVEPOINT sp1;
INSERT INTO items VALUES (6, 'six', 60);
RELEASE SAVEPOINT sp1;
COMMIT;
-- Errors inside a transaction, then ROLLBACK.
\set ON_ERROR_STOP 0
BEGIN;
INSERT INTO items VALUES (7, 'seven', 70);
INSERT INTO items VALUES (1, 'duplicate', 0);
\echo duplicate :SQLSTATE
SELECT 1;
\echo in-failed-transaction :SQLSTATE
ROLLBACK;
\echo rollback :SQLSTATE
\set ON_ERROR_STOP 1
SELECT count(*) AS after_rollback FROM items WHERE id = 7;
-- \copy from files, text and csv.
\copy items FROM '{dir}/in.txt'
\copy items FROM '{dir}/in.csv' WITH (FORMAT csv, HEADER true)
-- COPY FROM STDIN, good rows.
COPY items FROM STDIN;
14	fourteen	140
15	fifteen	150
\.
-- COPY FROM STDIN with a bad row in the middle: nothing of it is kept.
\set ON_ERROR_STOP 0
COPY items FROM STDIN;
20	twenty	200
21	twenty-one	not-a-number
22	twenty-two	220
\.
\echo copy-bad-row
\set ON_ERROR_STOP 1
SELECT count(*) AS from_bad_copy FROM items WHERE id BETWEEN 20 AND 29;
-- A temp table across statements.
CREATE TEMP TABLE scratch (id int, name text);
INSERT INTO scratch VALUES (30, 'thirty');
INSERT INTO scratch SELECT id + 1, name || '+1' FROM scratch;
INSERT INTO items SELECT id, name, id * 10 FROM scratch;
SELECT count(*) AS scratch_rows FROM scratch;
-- search_path.
CREATE SCHEMA other;
CREATE TABLE other.notes (v text);
SET search_path = other, public;
SHOW search_path;
INSERT INTO notes VALUES ('resolved through search_path');
SELECT count(*) AS items_via_public FROM items;
RESET search_path;
SHOW search_path;
-- LISTEN/NOTIFY within one session.
LISTEN psql_channel;
NOTIFY psql_channel, 'hello';
SELECT pg_notify('psql_channel', 'second');
UNLISTEN psql_channel;
NOTIFY psql_channel, 'not delivered';
-- \copy to files.
\copy (SELECT * FROM items ORDER BY id) TO '{dir}/out.txt'
\copy (SELECT * FROM items WHERE id >= 10 ORDER BY id) TO '{dir}/out.csv' WITH (FORMAT csv, HEADER true)
\echo done
"#;

/// What the script prints with `-q -At` (notification PIDs replaced by `N`).
const PSQL_EXPECTED_STDOUT: &str = r#"3
a
b
duplicate 23505
in-failed-transaction 25P02
rollback 00000
0
copy-bad-row
0
2
other, public
13
"$user", public
Asynchronous notification "psql_channel" with payload "hello" received from server process with PID N.

Asynchronous notification "psql_channel" with payload "second" received from server process with PID N.
done
"#;

const PSQL_IN_TXT: &str = "10\tten\t100\n11\t\\N\t110\n";
const PSQL_IN_CSV: &str = "id,name,qty\n12,\"twelve, with comma\",120\n13,\"quote \"\"q\"\"\",\n";

const PSQL_OUT_TXT: &str = "1\tone\t10\n2\ttwo\t20\n3\tthree\t30\n4\tfour\t40\n6\tsix\t60\n\
10\tten\t100\n11\t\\N\t110\n12\ttwelve, with comma\t120\n13\tquote \"q\"\t\\N\n\
14\tfourteen\t140\n15\tfifteen\t150\n30\tthirty\t300\n31\tthirty+1\t310\n";

const PSQL_OUT_CSV: &str = "id,name,qty\n10,ten,100\n11,,110\n12,\"twelve, with comma\",120\n\
13,\"quote \"\"q\"\"\",\n14,fourteen,140\n15,fifteen,150\n30,thirty,300\n31,thirty+1,310\n";

/// Replaces the digits after every "PID " with `N`.
fn mask_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("PID ") {
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            out.push('N');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_through_proxy() -> Result<()> {
    let s = setup().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.txt"), PSQL_IN_TXT)?;
    std::fs::write(d.join("in.csv"), PSQL_IN_CSV)?;
    let script = PSQL_SCRIPT.replace("{dir}", d.to_str().context("non-UTF-8 temp dir")?);
    std::fs::write(d.join("script.sql"), script)?;

    let out = run_client(
        Command::new(psql_bin())
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(d.join("script.sql"))
            .arg(&s.url),
        "psql",
        Duration::from_secs(120),
    )
    .await?
    .success("psql through the proxy")?;

    assert_eq!(
        mask_pids(&out.stdout),
        PSQL_EXPECTED_STDOUT,
        "psql stdout; stderr:\n{}",
        out.stderr
    );
    // Exactly the three errors the script provokes, nothing else.
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .collect();
    assert_eq!(errors.len(), 3, "stderr:\n{}", out.stderr);
    assert!(
        errors[0].contains("duplicate key value violates unique constraint \"items_pkey\""),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("current transaction is aborted"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("invalid input syntax for type integer: \"not-a-number\""),
        "{}",
        errors[2]
    );

    assert_eq!(
        std::fs::read_to_string(d.join("out.txt"))?,
        PSQL_OUT_TXT,
        "\\copy TO text file"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("out.csv"))?,
        PSQL_OUT_CSV,
        "\\copy TO csv file"
    );

    // The old cluster has exactly what was committed.
    assert_eq!(
        old_psql(&s.pair, "SELECT id, coalesce(name, '<null>'), coalesce(qty::text, '<null>') FROM items ORDER BY id").await?,
        "1|one|10\n2|two|20\n3|three|30\n4|four|40\n6|six|60\n10|ten|100\n11|<null>|110\n\
         12|twelve, with comma|120\n13|quote \"q\"|<null>\n14|fourteen|140\n15|fifteen|150\n\
         30|thirty|300\n31|thirty+1|310"
    );
    assert_eq!(
        old_psql(&s.pair, "SELECT v FROM other.notes").await?,
        "resolved through search_path"
    );
    // Dual writes mirrored the script's DDL: new has the same tables as old.
    let tables_sql =
        "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename) FROM pg_tables \
                      WHERE schemaname NOT IN ('pg_catalog', 'information_schema', '_switchyard')";
    let old_tables = old_psql(&s.pair, tables_sql).await?;
    let new_tables = tokio::task::block_in_place(|| s.pair.new.psql(DB, tables_sql))?;
    assert_eq!(new_tables, old_tables);
    // The session ended: its temp table went with its backend.
    let pair = &s.pair;
    poll_until_async(
        "the psql session's temp table to be dropped",
        Duration::from_secs(10),
        || async move {
            Ok((old_psql(
                pair,
                "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
            )
            .await?
                == "0")
                .then_some(()))
        },
    )
    .await?;
    s.proxy.shutdown().await;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// pgbench
// ------------------------------------------------------------------------------------------

/// The value after `label` on its own line of pgbench's report, e.g.
/// "number of failed transactions: 0 (0.000%)" → "0 (0.000%)".
fn report_value<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report.lines().find_map(|l| {
        l.strip_prefix(label)
            .map(|v| v.trim_start_matches(':').trim())
    })
}

async fn pgbench(url: &str, args: &[&str], what: &str) -> Result<ClientOutput> {
    run_client(
        Command::new(pgbench_bin()).args(args).arg(url),
        what,
        Duration::from_secs(300),
    )
    .await?
    .success(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_query_modes_through_proxy() -> Result<()> {
    let s = setup().await?;
    // Initialisation through the proxy: DDL, client-side COPY of the data, VACUUM, keys.
    pgbench(&s.url, &["-i", "-s", "1"], "pgbench -i -s 1").await?;
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT (SELECT count(*) FROM pgbench_branches), (SELECT count(*) FROM pgbench_tellers), \
             (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history)"
        )
        .await?,
        "1|10|100000|0"
    );

    const CLIENTS: u64 = 4;
    const TRANSACTIONS: u64 = 200;
    let (c, t) = (CLIENTS.to_string(), TRANSACTIONS.to_string());
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [true, false] {
            let what = format!(
                "pgbench -M {mode}{}",
                if select_only { " -S" } else { " (tpcb-like)" }
            );
            let before: u64 = old_psql(&s.pair, "SELECT count(*) FROM pgbench_history")
                .await?
                .parse()?;
            let mut args = vec!["-n", "-M", mode, "-c", &c, "-j", "2", "-t", &t];
            if select_only {
                args.push("-S");
            }
            let started = Instant::now();
            let out = pgbench(&s.url, &args, &what).await?;
            eprintln!("{what}: {:?}", started.elapsed());
            let report = &out.stdout;
            assert_eq!(
                report_value(report, "number of transactions actually processed"),
                Some(format!("{}/{}", CLIENTS * TRANSACTIONS, CLIENTS * TRANSACTIONS).as_str()),
                "{what}:\n{report}\n{}",
                out.stderr
            );
            let failed = report_value(report, "number of failed transactions")
                .with_context(|| format!("{what}: no failed-transactions line:\n{report}"))?;
            assert!(
                failed.starts_with("0 "),
                "{what}: failed transactions: {failed}\n{report}"
            );
            assert_eq!(
                report_value(report, "query mode"),
                Some(mode),
                "{what}:\n{report}"
            );

            let after: u64 = old_psql(&s.pair, "SELECT count(*) FROM pgbench_history")
                .await?
                .parse()?;
            let expected = if select_only {
                before
            } else {
                before + CLIENTS * TRANSACTIONS
            };
            assert_eq!(
                after, expected,
                "{what}: pgbench_history rows before {before}, after {after}"
            );
        }
    }
    // Every committed tpcb transaction moved the same delta through all four tables.
    let sums = old_psql(
        &s.pair,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) FROM pgbench_history)",
    )
    .await?;
    let parts: Vec<&str> = sums.split('|').collect();
    assert!(
        parts.len() == 4 && parts.iter().all(|p| *p == parts[0]),
        "balances disagree: {sums}"
    );
    s.proxy.shutdown().await;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Python drivers
// ------------------------------------------------------------------------------------------

/// Runs a driver script from `tests/python/` with `python` against `url`; fails unless it
/// exits 0.
async fn run_python(python: &Path, script: &str, url: &str) -> Result<ClientOutput> {
    let path = python_script(script);
    ensure!(path.is_file(), "{} is missing", path.display());
    run_client(
        Command::new(python).arg(&path).arg(url),
        script,
        Duration::from_secs(180),
    )
    .await?
    .success(script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_through_proxy() -> Result<()> {
    let python = python_bin()?; // before starting anything: a missing venv fails fast
    let s = setup().await?;
    let out = run_python(&python, "psycopg_client.py", &s.url).await?;
    assert!(
        out.stdout.contains("psycopg: all checks passed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // Rows the script leaves behind (see the script's docstring).
    assert_eq!(
        old_psql(&s.pair, "SELECT count(*), sum(id) FROM py_items").await?,
        "165|26926"
    );
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT id, coalesce(name, '<null>'), coalesce(amount::text, '<null>'), coalesce(ts::text, '<null>'), \
             coalesce(doc::text, '<null>'), coalesce(encode(raw, 'hex'), '<null>'), coalesce(tags::text, '<null>') \
             FROM py_items WHERE id <= 3 ORDER BY id"
        )
        .await?,
        "1|one|1.500|2024-02-29 12:34:56.789+00|{\"k\": [1, 2, {\"x\": null}]}|0001ff|{a,b}\n\
         2|twö ünicode|-0.001|2024-02-29 12:34:56.789+00|{}||{}\n\
         3|<null>|<null>|<null>|<null>|<null>|<null>"
    );
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT count(*), sum(amount) FROM py_items WHERE id BETWEEN 10 AND 109"
        )
        .await?,
        "100|1487.500"
    );
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT id, name FROM py_items WHERE id BETWEEN 110 AND 299 OR id >= 500 ORDER BY id"
        )
        .await?,
        "200|committed\n500|pipeline synced"
    );
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT count(*), min(name), sum(amount), min(tags::text) FROM py_items WHERE id BETWEEN 300 AND 349"
        )
        .await?,
        "50|copy\t300\n|16225.000|{x,NULL,z}"
    );
    assert_eq!(
        old_psql(&s.pair, "SELECT string_agg(encode(raw, 'hex'), ',' ORDER BY id) FROM py_items WHERE id BETWEEN 400 AND 409").await?,
        "9000ff,9100ff,9200ff,9300ff,9400ff,9500ff,9600ff,9700ff,9800ff,9900ff"
    );
    assert_eq!(
        old_psql(&s.pair, "SELECT label, n FROM py_notes").await?,
        "prepared|25"
    );
    s.proxy.shutdown().await;
    Ok(())
}

/// The pid a driver is told is the primary backend's own: `pg_backend_pid()`, its own
/// notifications and `pg_terminate_backend` agree with it, and a cancel still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_see_the_servers_own_backend_pid() -> Result<()> {
    let python = python_bin()?;
    let s = setup().await?;
    let out = run_python(&python, "backend_pid.py", &s.url).await?;
    ensure!(
        out.stdout.contains("backend_pid: all checks passed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_through_proxy() -> Result<()> {
    let python = python_bin()?; // before starting anything: a missing venv fails fast
    let s = setup().await?;
    let out = run_python(&python, "asyncpg_client.py", &s.url).await?;
    assert!(
        out.stdout.contains("asyncpg: all checks passed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT count(*), sum(id), sum(amount) FROM apg_items"
        )
        .await?,
        "1003|1499506|199783.1788"
    );
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT id, coalesce(name, '<null>'), coalesce(amount::text, '<null>'), coalesce(ts::text, '<null>'), \
             coalesce(doc::text, '<null>'), coalesce(encode(raw, 'hex'), '<null>'), coalesce(ints::text, '<null>'), \
             coalesce(tags::text, '<null>') FROM apg_items WHERE id <= 3 ORDER BY id"
        )
        .await?,
        "1|one|12345.6789|2001-09-09 01:46:40.123456+00|{\"a\": [1, 2], \"b\": null}|00fe01|{1,2,3}|{x,y}\n\
         2|ünïcødé|-0.0001|2001-09-10 01:46:40.123456+00|[]||{}|{}\n\
         3|<null>|<null>|<null>|<null>|<null>|<null>|<null>"
    );
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT name, encode(raw, 'hex'), ints::text FROM apg_items WHERE id IN (1000, 1999) ORDER BY id"
        )
        .await?,
        "copied 1000|e858|{1000,-1000}\ncopied 1999|cfa9|{1999,-1999}"
    );
    assert_eq!(
        old_psql(&s.pair, "SELECT n FROM apg_counter WHERE id = 1").await?,
        "40"
    );
    s.proxy.shutdown().await;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Cancel and statement_timeout
// ------------------------------------------------------------------------------------------

/// Waits until a backend on the old cluster is running `query` (exact text).
async fn wait_active(direct: &tokio_postgres::Client, query: &str) -> Result<i32> {
    poll_until_async(&format!("`{query}` to run on the old cluster"), Duration::from_secs(20), || async {
        let rows = direct
            .query(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active' AND wait_event = 'PgSleep'",
                &[&query],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i32>(0)))
    })
    .await
}

fn expect_sqlstate(
    result: Result<impl std::fmt::Debug, tokio_postgres::Error>,
    state: &SqlState,
    what: &str,
) -> Result<String> {
    match result {
        Ok(v) => bail!(
            "{what}: succeeded ({v:?}) instead of failing with {}",
            state.code()
        ),
        Err(e) => {
            let db = e
                .as_db_error()
                .with_context(|| format!("{what}: not a server error: {e:?}"))?;
            ensure!(
                db.code() == state,
                "{what}: SQLSTATE {} ({}) instead of {}",
                db.code().code(),
                db.message(),
                state.code()
            );
            Ok(db.message().to_string())
        }
    }
}

/// Sends a CancelRequest for an idle session the way libpq does (wait for the proxy to close
/// the cancel connection, which it does once the server has taken the request), then checks
/// that the session's next statement is not cancelled.
async fn idle_cancel_is_dropped(proxy: &RunningProxy) -> Result<()> {
    let mut w = Wire::connect(proxy.listen_addr()).await?;
    w.send_startup(3, 0, &[("user", PgCluster::USER), ("database", DB)])
        .await?;
    let frames = w.read_until_ready().await?;
    let key_data = frames
        .iter()
        .find(|f| f.tag() == b'K')
        .context("no BackendKeyData from the proxy")?
        .body();
    ensure!(key_data.len() >= 8, "short BackendKeyData: {key_data:?}");
    let pid = i32::from_be_bytes([key_data[0], key_data[1], key_data[2], key_data[3]]);
    let mut packet = BytesMut::new();
    StartupRequest::Cancel {
        pid,
        key: key_data.slice(4..),
    }
    .encode(&mut packet);
    let mut cancel = TcpStream::connect(proxy.listen_addr()).await?;
    cancel.write_all(&packet).await?;
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), cancel.read_to_end(&mut sink))
        .await
        .context("the proxy did not close the cancel connection within 10 s")??;
    ensure!(
        sink.is_empty(),
        "the proxy answered a cancel request with {sink:?}"
    );
    let frames = w.query("SELECT pg_sleep(0.3)").await?;
    if let Some(e) = first_error(&frames) {
        bail!("a statement after an idle-time cancel failed: {e:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_statement_timeout_through_proxy() -> Result<()> {
    let s = setup().await?;
    let direct = s.pair.old.connect(DB).await?;
    let a = std::sync::Arc::new(connect_proxy(&s.proxy).await?);
    let b = std::sync::Arc::new(connect_proxy(&s.proxy).await?);

    // Two sessions sleep; cancelling A must stop A's query only.
    let qa = "SELECT pg_sleep(30) /* a */";
    let qb = "SELECT pg_sleep(30) /* b */";
    let started = Instant::now();
    let ta = tokio::spawn({
        let a = a.clone();
        async move { a.simple_query(qa).await.map(|_| ()) }
    });
    let tb = tokio::spawn({
        let b = b.clone();
        async move { b.simple_query(qb).await.map(|_| ()) }
    });
    let pid_a = wait_active(&direct, qa).await?;
    let pid_b = wait_active(&direct, qb).await?;
    assert_ne!(pid_a, pid_b);

    a.cancel_token()
        .cancel_query(NoTls)
        .await
        .context("sending the cancel for A")?;
    let ra = tokio::time::timeout(Duration::from_secs(15), ta)
        .await
        .context("A's query did not end within 15 s of the cancel")??;
    let msg = expect_sqlstate(ra, &SqlState::QUERY_CANCELED, "cancelled pg_sleep(30)")?;
    assert_eq!(msg, "canceling statement due to user request");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        started.elapsed()
    );
    // B still sleeps on its backend.
    assert!(!tb.is_finished(), "B's query ended when A was cancelled");
    let still: i64 = direct
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query = $2 AND state = 'active'", &[&pid_b, &qb])
        .await?
        .get(0);
    assert_eq!(still, 1, "B's backend stopped running its query");
    b.cancel_token()
        .cancel_query(NoTls)
        .await
        .context("sending the cancel for B")?;
    let rb = tokio::time::timeout(Duration::from_secs(15), tb)
        .await
        .context("B's query did not end")??;
    expect_sqlstate(rb, &SqlState::QUERY_CANCELED, "cancelled pg_sleep(30) on B")?;

    // Both sessions go on working, on the same backends.
    for (client, pid) in [(&a, pid_a), (&b, pid_b)] {
        let row = client
            .query_one("SELECT pg_backend_pid(), 1 + 1", &[])
            .await?;
        assert_eq!(row.get::<_, i32>(0), pid);
        assert_eq!(row.get::<_, i32>(1), 2);
    }

    // A cancel while the session is idle is dropped, as by PostgreSQL. (tokio-postgres's
    // cancel_query returns without waiting for the cancel to be processed, so it cannot be used
    // to check this: a late cancel would hit a later statement. libpq waits for the EOF.)
    idle_cancel_is_dropped(&s.proxy).await?;

    // statement_timeout through the proxy, as on the server directly.
    a.batch_execute("SET statement_timeout = '200ms'").await?;
    let started = Instant::now();
    let via_proxy = expect_sqlstate(
        a.query("SELECT pg_sleep(5)", &[]).await,
        &SqlState::QUERY_CANCELED,
        "statement_timeout through the proxy",
    )?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "statement_timeout took {took:?}"
    );
    direct
        .batch_execute("SET statement_timeout = '200ms'")
        .await?;
    let directly = expect_sqlstate(
        direct.query("SELECT pg_sleep(5)", &[]).await,
        &SqlState::QUERY_CANCELED,
        "statement_timeout directly",
    )?;
    assert_eq!(via_proxy, directly);
    assert_eq!(via_proxy, "canceling statement due to statement timeout");
    // Simple protocol too, inside a transaction: the transaction is aborted, then rolled back.
    a.batch_execute("BEGIN").await?;
    expect_sqlstate(
        a.simple_query("SELECT pg_sleep(5)").await,
        &SqlState::QUERY_CANCELED,
        "statement_timeout in a transaction",
    )?;
    expect_sqlstate(
        a.simple_query("SELECT 1").await,
        &SqlState::IN_FAILED_SQL_TRANSACTION,
        "statement in the aborted transaction",
    )?;
    a.batch_execute("ROLLBACK; RESET statement_timeout").await?;
    let row = a
        .query_one(
            "SELECT current_setting('statement_timeout'), pg_backend_pid()",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "0");
    assert_eq!(row.get::<_, i32>(1), pid_a);
    s.proxy.shutdown().await;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// LISTEN/NOTIFY
// ------------------------------------------------------------------------------------------

/// Connects through the proxy and forwards every notification of the session to a channel.
async fn listening_client(
    proxy: &RunningProxy,
) -> Result<(
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<Notification>,
)> {
    let (client, mut conn) = proxy_config(proxy, PgCluster::USER, None)
        .connect(NoTls)
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "listening connection failed");
                    break;
                }
            }
        }
    });
    Ok((client, rx))
}

async fn next_notification(
    rx: &mut mpsc::UnboundedReceiver<Notification>,
) -> Result<(String, String, i32)> {
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .context("no notification within 10 s")?
        .context("the listening connection ended")?;
    Ok((
        n.channel().to_string(),
        n.payload().to_string(),
        n.process_id(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_through_proxy() -> Result<()> {
    let s = setup().await?;
    let (listener, mut rx) = listening_client(&s.proxy).await?;
    listener
        .batch_execute("LISTEN orders; LISTEN other")
        .await?;
    let notifier = connect_proxy(&s.proxy).await?;
    let notifier_pid: i32 = notifier
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);

    notifier.batch_execute("NOTIFY orders, 'order 1'").await?;
    // In a transaction: delivered once, at commit; a rolled-back one never.
    notifier
        .batch_execute(
            "BEGIN; SELECT pg_notify('orders', 'order 2'); SELECT pg_notify('other', 'x'); COMMIT",
        )
        .await?;
    notifier
        .batch_execute("BEGIN; NOTIFY orders, 'rolled back'; ROLLBACK")
        .await?;
    // Extended protocol.
    notifier
        .execute("SELECT pg_notify($1, $2)", &[&"orders", &"order 3"])
        .await?;
    // A notifier talking to the old cluster directly reaches the proxied listener as well.
    let direct = s.pair.old.connect(DB).await?;
    let direct_pid: i32 = direct
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    direct.batch_execute("NOTIFY orders, 'direct'").await?;
    notifier.batch_execute("NOTIFY orders, 'sentinel'").await?;

    let mut got = Vec::new();
    loop {
        let n = next_notification(&mut rx).await?;
        let done = n.1 == "sentinel";
        got.push(n);
        if done {
            break;
        }
    }
    let p = notifier_pid;
    assert_eq!(
        got,
        vec![
            ("orders".to_string(), "order 1".to_string(), p),
            ("orders".to_string(), "order 2".to_string(), p),
            ("other".to_string(), "x".to_string(), p),
            ("orders".to_string(), "order 3".to_string(), p),
            ("orders".to_string(), "direct".to_string(), direct_pid),
            ("orders".to_string(), "sentinel".to_string(), p),
        ]
    );
    // A round trip on the listener: nothing more is queued, no duplicates.
    listener.simple_query("SELECT 1").await?;
    assert!(rx.try_recv().is_err(), "an extra notification arrived");

    // After UNLISTEN nothing arrives; the session stays usable and a new LISTEN works.
    listener.batch_execute("UNLISTEN orders").await?;
    notifier
        .batch_execute("NOTIFY orders, 'after unlisten'; NOTIFY other, 'still listening'")
        .await?;
    assert_eq!(
        next_notification(&mut rx).await?,
        ("other".to_string(), "still listening".to_string(), p)
    );
    listener.simple_query("SELECT 1").await?;
    assert!(
        rx.try_recv().is_err(),
        "a notification after UNLISTEN arrived"
    );
    s.proxy.shutdown().await;
    Ok(())
}
