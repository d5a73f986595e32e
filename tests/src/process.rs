//! Small process helpers: running a command with a checked exit status, signals, liveness.

use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Runs `cmd` to completion; on a non-zero exit the error names `what` and carries stderr and
/// stdout. Returns stdout.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("{what}: could not run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{what} failed ({}): {cmd:?}\nstderr:\n{}\nstdout:\n{}",
            output.status,
            stderr.trim_end(),
            stdout.trim_end()
        );
    }
    Ok(stdout)
}

/// True when the current effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, ...), `None` when there is no such process.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// True when `pid` names a live process (a zombie counts as dead).
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Live children of `pid` (direct children only), from `/proc`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| parent_of(child) == Some(pid) && pid_alive(child))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn send_signal(pid: i32, sig: Signal) -> Result<()> {
    match signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("sending {sig} to pid {pid}")),
    }
}

/// Path of a workspace binary: `env_var` if set, else next to the test executable's target
/// directory (`cargo build --workspace --bins` puts it there).
pub fn workspace_bin(name: &str, env_var: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    if let Ok(p) = std::env::var(env_var) {
        return Ok(std::path::PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .context("test executable has no target directory")?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        anyhow::bail!(
            "{} not found: build it first with `cargo build --workspace --bins` (or set {env_var})",
            candidate.display()
        )
    }
}
