//! Helpers for the cutover tests: a pair with the tables they read, instances that follow
//! the flag quickly, flips through the admin API, and which server answered.

use crate::http::{get, request};
use crate::proxy::{Pair, DB};
use crate::wait::poll_until_async;
use anyhow::{Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_proxy::{ProxyConfig, RunningProxy};
use tokio_postgres::Client;

/// What the tests read: `t`, another `t` in schema `s2` (the session's search_path must
/// follow it to new), and an enum column (a type whose OID new need not share).
pub const SCHEMA: &str = "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL);
                      CREATE SCHEMA s2; CREATE TABLE s2.t (id int PRIMARY KEY, w text);
                      INSERT INTO s2.t VALUES (1, 'in s2');
                      CREATE TYPE mood AS ENUM ('ok', 'sad');
                      CREATE TABLE m (id int PRIMARY KEY, x mood);
                      INSERT INTO m VALUES (1, 'sad');";

/// Two clusters with `SCHEMA` on both (and the proxy's log in the test output).
pub async fn pair() -> Result<Pair> {
    crate::mirror::init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    for c in [&pair.old, &pair.new] {
        tokio::task::block_in_place(|| c.psql(DB, SCHEMA))?;
    }
    Ok(pair)
}

/// An instance named `id` that follows the flag every 100 ms and gives a flip 3 s.
pub fn config(pair: &Pair, id: &str) -> ProxyConfig {
    let mut c = pair.config();
    c.instance_id = Some(id.into());
    c.cutover.poll_ms = 100;
    c.cutover.flip_timeout_secs = 3;
    c
}

pub fn admin(p: &RunningProxy) -> Result<SocketAddr> {
    p.admin_addr().context("the admin server is off")
}

/// POSTs a flip to an instance; returns (HTTP status, JSON body).
pub async fn flip(p: &RunningProxy, body: &str) -> Result<(u16, Value)> {
    let (status, text) = request(admin(p)?, "POST", "/api/cutover", body).await?;
    let v = serde_json::from_str(&text).with_context(|| format!("flip answer: {text}"))?;
    Ok((status, v))
}

pub async fn phase_of(p: &RunningProxy) -> Result<(String, i64)> {
    let (_, text) = get(admin(p)?, "/api/status").await?;
    let v: Value = serde_json::from_str(&text)?;
    Ok((
        v["cutover"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["cutover"]["epoch"].as_i64().unwrap_or(-1),
    ))
}

/// Which server answered: `SHOW port` is a plain read, routed like any other.
pub async fn port_of(c: &Client) -> Result<u16> {
    let rows = c.simple_query("SHOW port").await?;
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).context("no port")?.parse()?);
        }
    }
    anyhow::bail!("SHOW port returned no row")
}

pub async fn one(c: &Client, sql: &str) -> Result<String> {
    for m in c.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    anyhow::bail!("{sql}: no row")
}

/// A direct connection to one cluster, around the proxy.
pub async fn pair_client(c: &crate::PgCluster) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(&c.url(DB), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Waits (up to 10 s) until `query` runs, active, on `c`: seen directly, around the proxy.
pub async fn wait_active(c: &crate::PgCluster, query: &str) -> Result<()> {
    let direct = pair_client(c).await?;
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query = '{}' AND state = 'active'",
        query.replace('\'', "''")
    );
    poll_until_async(
        &format!("{query} to run on port {}", c.port()),
        Duration::from_secs(10),
        || async { Ok((one(&direct, &running).await? == "1").then_some(())) },
    )
    .await
}

/// `switchyard-proxy cutover ARGS --old .. --new ..` against the pair, run to its end (off
/// the runtime's worker).
pub fn cutover_cli(pair: &Pair, args: &[&str]) -> Result<std::process::Output> {
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    tokio::task::block_in_place(|| {
        std::process::Command::new(crate::proxy::proxy_bin()?)
            .arg("cutover")
            .args(args)
            .args(["--old", &old, "--new", &new])
            .output()
            .with_context(|| format!("switchyard-proxy cutover {}", args.join(" ")))
    })
}

/// pgbench, run with `-M what`, exited 0 without a failed transaction; else an error with
/// what it printed.
pub fn pgbench_without_failures(what: &str, out: std::process::Output) -> Result<()> {
    crate::reconciler::ToolRun::from(out)
        .success(&format!("pgbench -M {what}"))?
        .stdout_has("number of failed transactions: 0 ")?;
    Ok(())
}

/// POSTs a flip that must be refused with HTTP `status` and an error containing `error`;
/// the report.
pub async fn refused_flip(p: &RunningProxy, body: &str, status: u16, error: &str) -> Result<Value> {
    let (got, report) = flip(p, body).await?;
    anyhow::ensure!(
        got == status && report["error"].as_str().is_some_and(|e| e.contains(error)),
        "{body}: want {status} with {error:?}, got {got} {report}"
    );
    Ok(report)
}

/// The names of the failed checks in a flip's report.
pub fn failed_checks(report: &Value) -> Result<Vec<String>> {
    Ok(report["checks"]
        .as_array()
        .context("the report has no checks")?
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect())
}
