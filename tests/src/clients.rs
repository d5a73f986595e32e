//! Real client programs for end-to-end tests: `psql`, `pgbench` and the Python drivers
//! (psycopg 3, asyncpg) from the virtualenv that `.ci/setup` creates.
//!
//! Environment:
//! - `SWITCHYARD_PYTHON`: the Python interpreter to run the driver scripts with (default
//!   `${SWITCHYARD_CACHE:-/root/.cache/switchyard}/venv/bin/python`).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
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

/// The Python interpreter with psycopg and asyncpg: `SWITCHYARD_PYTHON`, else the venv under
/// `SWITCHYARD_CACHE`. Fails with a hint at `.ci/setup` when it is missing.
pub fn python_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHYARD_PYTHON") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("SWITCHYARD_PYTHON={} does not exist", p.display());
        }
        return Ok(p);
    }
    let cache = std::env::var_os("SWITCHYARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/switchyard"));
    let p = cache.join("venv/bin/python");
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

/// What a finished client program printed.
#[derive(Debug)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientOutput {
    /// Fails unless the program exited with status 0; the error carries both outputs.
    pub fn success(self, what: &str) -> Result<ClientOutput> {
        if self.status.success() {
            Ok(self)
        } else {
            bail!(
                "{what} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.status,
                self.stdout,
                self.stderr
            )
        }
    }
}

/// Runs a client program to completion without blocking the runtime, killing it if it runs
/// longer than `timeout`. libpq environment variables that could redirect it are removed.
pub async fn run_client(
    cmd: &mut tokio::process::Command,
    what: &str,
    timeout: Duration,
) -> Result<ClientOutput> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
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
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    Ok(ClientOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
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
