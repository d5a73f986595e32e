//! Python drivers through the proxy: psycopg 3 and asyncpg, and the backend pid they are told.

use super::*;
use anyhow::{ensure, Result};
use std::path::Path;
use std::time::Duration;
use switchyard_tests::clients::{python_bin, python_script, run_client_ok, ClientOutput};
use tokio::process::Command;

/// Runs a driver script from `tests/python/` with `python` against `url`; fails unless it
/// exits 0.
async fn run_python(python: &Path, script: &str, url: &str) -> Result<ClientOutput> {
    let path = python_script(script);
    ensure!(path.is_file(), "{} is missing", path.display());
    run_client_ok(
        Command::new(python).arg(&path).arg(url),
        script,
        Duration::from_secs(180),
    )
    .await
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
