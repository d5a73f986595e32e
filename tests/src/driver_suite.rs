//! A driver's own test suite (asyncpg's, from its sdist, which `.ci/setup` fetches) run
//! against a server, with every test's outcome read back: what tells whether the proxy is
//! invisible to that driver.

use crate::clients::{cache_dir, python_script, run_client};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory holding asyncpg's `tests/` package for the asyncpg installed in the venv.
pub fn asyncpg_suite(python: &Path) -> Result<PathBuf> {
    let out = std::process::Command::new(python)
        .args(["-c", "import asyncpg; print(asyncpg.__version__)"])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(out.status.success(), "asyncpg is not importable: {out:?}");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = cache_dir().join("asyncpg-tests").join(&version);
    if !dir.join("tests/test_execute.py").is_file() {
        bail!(
            "asyncpg {version}'s test suite is not in {}: run .ci/setup to fetch it",
            dir.display()
        );
    }
    Ok(dir)
}

/// Where a suite runs: the server's address and the role and database it connects as.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
}

/// One run of a suite: every test's outcome (`pass`, `fail`, `error`, `skip`, ...) by test
/// id, and the tracebacks of those that failed.
pub struct SuiteRun {
    pub outcomes: BTreeMap<String, String>,
    pub log: String,
}

/// Runs `modules` of the suite in `suite` against `target`.
pub async fn run_unittest(
    python: &Path,
    suite: &Path,
    modules: &[&str],
    target: &Target<'_>,
    timeout: Duration,
) -> Result<SuiteRun> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(python_script("unittest_outcomes.py"))
        .args(modules)
        .current_dir(suite)
        .env("SUITE_PGHOST", target.host)
        .env("SUITE_PGPORT", target.port.to_string())
        .env("SUITE_PGUSER", target.user)
        .env("SUITE_PGDATABASE", target.database)
        .env("SUITE_PGPASSWORD", target.password)
        .env_remove("PGSSLMODE");
    let out = run_client(&mut cmd, "driver suite", timeout).await?;
    ensure!(
        out.stdout.lines().any(|l| l == "DONE"),
        "the suite did not finish: {out:?}"
    );
    let mut outcomes = BTreeMap::new();
    for line in out.stdout.lines() {
        if let Some((outcome, id)) = line.split_once('\t') {
            outcomes.insert(id.to_string(), outcome.to_string());
        }
    }
    Ok(SuiteRun {
        outcomes,
        log: out.stderr,
    })
}

/// Tests that pass in `direct` and not in `through`, with their outcome there.
pub fn regressions(
    direct: &BTreeMap<String, String>,
    through: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    direct
        .iter()
        .filter(|(_, o)| *o == "pass")
        .filter_map(|(id, _)| {
            let there = through.get(id).map(String::as_str).unwrap_or("missing");
            (there != "pass").then(|| (id.clone(), there.to_string()))
        })
        .collect()
}

/// A list of known differences: `test id<TAB>reason` lines, `#` comments.
pub fn known_list(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut known = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line.split_once('\t').with_context(|| {
            format!("{}: no tab between test and reason: {line}", path.display())
        })?;
        known.insert(id.trim().to_string(), reason.trim().to_string());
    }
    Ok(known)
}
