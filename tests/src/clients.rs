//! Real client programs for end-to-end tests: `psql`, `pgbench`, the Python drivers and
//! frameworks (psycopg 3, asyncpg, SQLAlchemy, Django) from the virtualenv that `.ci/setup`
//! creates, and node-postgres, which it installs into the cache.
//!
//! Environment:
//! - `SWITCHYARD_PYTHON`: the Python interpreter to run the driver scripts with (default
//!   `${SWITCHYARD_CACHE:-/root/.cache/switchyard}/venv/bin/python`).
//! - `SWITCHYARD_NODE`: the Node.js binary (default: `node` on `PATH`).
//! - `SWITCHYARD_NODE_MODULES`: the `node_modules` folder holding `pg` (default
//!   `${SWITCHYARD_CACHE:-/root/.cache/switchyard}/node/node_modules`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::pg::bin_dir;

/// A client program from the PostgreSQL binaries directory, else from `/usr/bin`.
fn pg_client(name: &str) -> PathBuf {
    let beside = bin_dir().join(name);
    if beside.exists() {
        beside
    } else {
        PathBuf::from("/usr/bin").join(name)
    }
}

/// `psql`.
pub fn psql_bin() -> PathBuf {
    pg_client("psql")
}

/// `pgbench`.
pub fn pgbench_bin() -> PathBuf {
    pg_client("pgbench")
}

/// `SWITCHYARD_CACHE`, else `/root/.cache/switchyard` (where `.ci/setup` puts things).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/switchyard"))
}

/// The file `var` names, if it is set; an error when that file does not exist.
fn file_from_env(var: &str) -> Result<Option<PathBuf>> {
    let Some(p) = std::env::var_os(var).map(PathBuf::from) else {
        return Ok(None);
    };
    if !p.is_file() {
        bail!("{var}={} does not exist", p.display());
    }
    Ok(Some(p))
}

/// The Python interpreter with psycopg and asyncpg: `SWITCHYARD_PYTHON`, else the venv under
/// `SWITCHYARD_CACHE`. Fails with a hint at `.ci/setup` when it is missing.
pub fn python_bin() -> Result<PathBuf> {
    if let Some(p) = file_from_env("SWITCHYARD_PYTHON")? {
        return Ok(p);
    }
    let p = cache_dir().join("venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} not found: run .ci/setup to create the Python virtualenv with psycopg and asyncpg \
             (or set SWITCHYARD_PYTHON)",
            p.display()
        )
    }
}

/// A driver script shipped in `tests/python/`.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// The Node.js binary: `SWITCHYARD_NODE`, else `node` found on `PATH`.
pub fn node_bin() -> Result<PathBuf> {
    if let Some(p) = file_from_env("SWITCHYARD_NODE")? {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .context("node is not on PATH: run .ci/setup (or set SWITCHYARD_NODE)")
}

/// The `node_modules` folder with node-postgres, for `NODE_PATH` (scripts run from the
/// source tree, so `require('pg')` cannot find it beside them): `SWITCHYARD_NODE_MODULES`,
/// else `node/node_modules` under `SWITCHYARD_CACHE`. Fails with a hint at `.ci/setup` when
/// `pg` is not there.
pub fn node_modules() -> Result<PathBuf> {
    let dir = std::env::var_os("SWITCHYARD_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("node/node_modules"));
    if dir.join("pg/package.json").is_file() {
        Ok(dir)
    } else {
        bail!(
            "{} has no node-postgres: run .ci/setup (or set SWITCHYARD_NODE_MODULES)",
            dir.display()
        )
    }
}

/// A script shipped in `tests/node/`.
pub fn node_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("node")
        .join(name)
}

/// What a finished client program printed (the same as a tool's run).
pub type ClientOutput = crate::reconciler::ToolRun;

/// Runs a client program to completion without blocking the runtime, killing it if it runs
/// longer than `timeout`. libpq environment variables that could redirect it are removed.
pub async fn run_client(
    cmd: &mut tokio::process::Command,
    what: &str,
    timeout: Duration,
) -> Result<ClientOutput> {
    crate::process::piped(cmd)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .env_remove("PGPASSWORD");
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    crate::reconciler::wait_tool(child, what, timeout).await
}

/// [`run_client`], which must exit 0; the error carries both outputs.
pub async fn run_client_ok(
    cmd: &mut tokio::process::Command,
    what: &str,
    timeout: Duration,
) -> Result<ClientOutput> {
    run_client(cmd, what, timeout).await?.success(what)
}

/// Runs `psql -X -At URL -c SQL` off the async runtime and returns its output (exit status,
/// stdout, stderr) for the caller to check.
pub async fn psql_url(url: &str, sql: &str) -> Result<std::process::Output> {
    let (url, sql) = (url.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(psql_bin())
            .args(["-X", "-At", &url, "-c", &sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .context("running psql")
    })
    .await
    .context("psql task")?
}

/// [`psql_url`] that must succeed: what psql printed, trimmed (its stderr in the error).
pub async fn psql_value(url: &str, sql: &str) -> Result<String> {
    let out = psql_url(url, sql).await?;
    anyhow::ensure!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// pgbench `ARGS URL` to its end (at most 120 s), which must exit 0 without a failed
/// transaction; what it printed.
pub async fn pgbench_clean(url: &str, args: &[&str]) -> Result<String> {
    let out = run_client_ok(
        tokio::process::Command::new(pgbench_bin())
            .args(args)
            .arg(url),
        &format!("pgbench {args:?}"),
        Duration::from_secs(120),
    )
    .await?;
    anyhow::ensure!(
        out.stdout.contains("number of failed transactions: 0"),
        "pgbench saw errors:\n{}",
        out.stdout
    );
    Ok(out.stdout)
}
