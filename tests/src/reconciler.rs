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

impl From<std::process::Output> for ToolRun {
    fn from(out: std::process::Output) -> ToolRun {
        ToolRun {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl ToolRun {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails unless the program exited with status 0; the error carries both outputs.
    pub fn success(self, what: &str) -> Result<ToolRun> {
        if self.status.success() {
            Ok(self)
        } else {
            anyhow::bail!(
                "{what} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.status,
                self.stdout,
                self.stderr
            )
        }
    }

    /// The run itself if it exited with `code`; else an error with both outputs.
    pub fn exits(self, code: i32) -> Result<ToolRun> {
        anyhow::ensure!(self.code() == Some(code), "{}", self.text());
        Ok(self)
    }

    /// The run itself if its stdout holds `part`; else an error with both outputs.
    pub fn stdout_has(self, part: &str) -> Result<ToolRun> {
        anyhow::ensure!(
            self.stdout.contains(part),
            "stdout lacks {part:?}:\n{}",
            self.text()
        );
        Ok(self)
    }

    /// The run itself if its stderr holds `part`; else an error with both outputs.
    pub fn stderr_has(self, part: &str) -> Result<ToolRun> {
        anyhow::ensure!(
            self.stderr.contains(part),
            "stderr lacks {part:?}:\n{}",
            self.text()
        );
        Ok(self)
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
    let child = tool_command(reconciler_bin()?, args)
        .spawn()
        .context("starting switchyard-reconciler")?;
    wait_tool(child, &format!("switchyard-reconciler {args:?}"), timeout).await
}

/// A `BIN ARGS` command for one of the tools, with the test's `SWITCHYARD_*` variables
/// removed (so they cannot change what is tested; `SWITCHYARD_LOG` stays), output piped,
/// killed on drop.
pub fn tool_command(bin: PathBuf, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    crate::process::piped(cmd.args(args));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") && k != "SWITCHYARD_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Waits for a spawned tool's output (`what` names it in errors), killed after `timeout`.
pub async fn wait_tool(
    child: tokio::process::Child,
    what: &str,
    timeout: Duration,
) -> Result<ToolRun> {
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    Ok(ToolRun::from(out))
}

/// `switchyard-reconciler` running in the background (e.g. `replay --follow`), its output
/// in a temporary file. Killed on drop.
pub struct ReconcilerProcess {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl ReconcilerProcess {
    /// Polls `probe` (off the runtime's worker, as [`crate::wait::poll_until`]) until it
    /// yields a value; fails at once, with the log, if the process exits meanwhile. The
    /// probe gets the process to read its log.
    pub fn poll_while_running<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&ReconcilerProcess) -> Result<Option<T>>,
    ) -> Result<T> {
        tokio::task::block_in_place(|| {
            crate::wait::poll_until(what, timeout, || {
                if let Some(s) = self.try_wait()? {
                    anyhow::bail!(
                        "switchyard-reconciler exited with {s}:\n{}",
                        self.log_text()
                    );
                }
                probe(self)
            })
        })
    }

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

/// A row record of `"public".<table>` key `{"id": id}` from `origin`, as a proxy writes it
/// when the other database did not take the change (`reason`).
pub fn row_record(
    origin: switchyard_core::retry::Origin,
    table: &str,
    id: i32,
    reason: &str,
) -> switchyard_core::retry::RetryRecord {
    use switchyard_core::retry::{RecordKind, RetryRecord};
    let table = format!("\"public\".\"{table}\"");
    let key = serde_json::json!({ "id": id });
    RetryRecord {
        idempotency_key: RetryRecord::make_key(&origin, RecordKind::Row, &table, &key.to_string()),
        kind: RecordKind::Row,
        table_name: Some(table),
        key: Some(key),
        statement: None,
        origin,
        reason: reason.into(),
    }
}
