//! The real `switchyard-reconciler` binary, run to completion.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// Path of the `switchyard-reconciler` binary: `SWITCHYARD_RECONCILER_BIN`, else next to
/// the test executable's target directory (`scripts/test.sh` puts it there).
pub fn reconciler_bin() -> Result<PathBuf> {
    crate::process::workspace_bin("switchyard-reconciler", "SWITCHYARD_RECONCILER_BIN")
}

/// What a run of one of the tools printed and how it exited.
#[derive(Debug)]
pub struct ToolRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolRun {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Both outputs, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// What a reconciler run printed and how it exited.
pub type ReconcilerRun = ToolRun;

/// Runs `switchyard-reconciler ARGS` without blocking the runtime (killed after
/// `timeout`). `SWITCHYARD_*` variables of the test's environment are removed so they
/// cannot change what is tested.
pub async fn run_reconciler(args: &[&str], timeout: Duration) -> Result<ReconcilerRun> {
    let mut cmd = tokio::process::Command::new(reconciler_bin()?);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") && k != "SWITCHYARD_LOG" {
            cmd.env_remove(k);
        }
    }
    let child = cmd.spawn().context("starting switchyard-reconciler")?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| {
            format!("switchyard-reconciler {args:?} did not finish within {timeout:?}")
        })?
        .context("waiting for switchyard-reconciler")?;
    Ok(ReconcilerRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `switchyard-reconciler` running in the background (e.g. `replay --follow`), its output
/// in a temporary file. Killed on drop.
pub struct ReconcilerProcess {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl ReconcilerProcess {
    /// Starts `switchyard-reconciler ARGS` with `env` added (other `SWITCHYARD_*` variables
    /// of the test's environment removed).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<ReconcilerProcess> {
        let log = tempfile::NamedTempFile::new().context("creating the reconciler log file")?;
        let bin = reconciler_bin()?;
        crate::process::require_failpoints_for(&bin, env)?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?);
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHYARD_") && k != "SWITCHYARD_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting switchyard-reconciler")?;
        Ok(ReconcilerProcess { child, log })
    }

    /// The exit status once it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .context("checking the reconciler process")
    }

    /// Everything it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for ReconcilerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
