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

/// `cmd` set up for a program whose output a test reads: no stdin, stdout and stderr piped,
/// killed when its handle drops.
pub fn piped(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
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
/// directory ([`BUILD_FOR_TESTS`] puts it there).
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
            "{} not found: build it first with {BUILD_FOR_TESTS} (or set {env_var})",
            candidate.display()
        )
    }
}

/// How the binaries the tests spawn are built: with the `failpoints` feature, which
/// `scripts/test.sh` turns on (a plain `cargo build` leaves it off, as users get it).
pub const BUILD_FOR_TESTS: &str = "`bash scripts/test.sh` (or `cargo build --workspace --bins \
     --features switchyard-proxy/failpoints,switchyard-backfill/failpoints,\
     switchyard-reconciler/failpoints`)";

/// The variables the binaries read their failpoints from (only when built with the feature).
pub const FAILPOINT_VARS: [&str; 2] = ["SWITCHYARD_FAILPOINT", "BACKFILL_TEST_FAILPOINT"];

/// Fails, naming the build command, unless `bin` has its failpoints compiled in; without
/// them a failpoint in `env` would be ignored and the test would wait for a crash or a hold
/// that never comes, then fail far from the cause.
pub fn require_failpoints_for(bin: &std::path::Path, env: &[(&str, &str)]) -> Result<()> {
    if !env.iter().any(|(k, _)| FAILPOINT_VARS.contains(k)) {
        return Ok(());
    }
    // The binaries put the mark in their version (see `failpoint::VERSION` in each crate).
    let version = run_checked(Command::new(bin).arg("--version"), "reading the version")?;
    if version.contains("(failpoints)") {
        return Ok(());
    }
    bail!(
        "{} was built without the `failpoints` feature ({}), so the failpoint this test \
         sets would never fire: build the binaries with {BUILD_FOR_TESTS}",
        bin.display(),
        version.trim()
    )
}
