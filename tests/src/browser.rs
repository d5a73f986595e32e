//! Headless Chromium (Debian's `chromium`, installed by `.ci/setup`) for the dashboard
//! test: the page's DOM after its scripts ran, and a screenshot kept as a test artifact.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `SWITCHYARD_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("SWITCHYARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn headless(url: &str, extra: &[String], profile: &Path) -> Result<std::process::Output> {
    let bin = chromium_bin();
    if !bin.is_file() {
        bail!(
            "{} not found: run .ci/setup (Debian package chromium)",
            bin.display()
        );
    }
    Command::new(&bin)
        .args([
            "--headless",
            // Root in a container has no user namespace for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Lets the page's fetches and timers run before the DOM is taken.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

/// The page's DOM after its scripts ran.
pub fn dump_dom(url: &str) -> Result<String> {
    let profile = tempfile::tempdir().context("a Chromium profile directory")?;
    let out = headless(url, &["--dump-dom".to_string()], profile.path())?;
    if !out.status.success() {
        bail!(
            "chromium --dump-dom {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A PNG screenshot of the page at `path` (1280×2000).
pub fn screenshot(url: &str, path: &Path) -> Result<()> {
    let profile = tempfile::tempdir().context("a Chromium profile directory")?;
    let out = headless(
        url,
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,2000".to_string(),
        ],
        profile.path(),
    )?;
    if !out.status.success() || !path.is_file() {
        bail!(
            "chromium --screenshot {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Loads `url` in the browser (off the runtime's worker) until `probe` finds in its DOM
/// what it waits for, for up to 60 s (see [`crate::wait::poll_until`]).
pub fn wait_for_page<T>(
    url: &str,
    what: &str,
    mut probe: impl FnMut(String) -> Result<Option<T>>,
) -> Result<T> {
    tokio::task::block_in_place(|| {
        crate::wait::poll_until(what, std::time::Duration::from_secs(60), || {
            probe(dump_dom(url)?)
        })
    })
}
