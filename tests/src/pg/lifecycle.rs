//! Starting, stopping and crashing a [`PgCluster`] (`pg_ctl` and signals).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;

use super::bin::server_command;
use super::cluster::PgCluster;
use crate::logs;
use crate::ports::accepts_connections;
use crate::process::{children, pid_alive, run_checked, send_signal};
use crate::wait::poll_until;

/// Upper bound for `pg_ctl -w` start and stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";

impl PgCluster {
    /// `pg_ctl start -w`; on failure the error carries the new part of the server log, and the
    /// flag says whether the failure was a port already in use.
    pub(super) fn pg_ctl_start(&self) -> std::result::Result<(), (anyhow::Error, bool)> {
        let before = logs::len(&self.log);
        let result = run_checked(
            server_command("pg_ctl", &self.root)
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "start"]),
            "pg_ctl start",
        );
        result.map(|_| ()).map_err(|err| {
            let new_log = logs::since(&self.log, before);
            let port_taken = new_log.contains("Address already in use");
            let tail = logs::tail(&self.log, logs::TAIL_LINES);
            let err = anyhow!(
                "PostgreSQL in {} did not start on port {}: {err:#}\n--- tail of {} ---\n{tail}",
                self.data.display(),
                self.port,
                self.log.display()
            );
            (err, port_taken)
        })
    }

    /// Starts the server again after a stop or [`kill`](Self::kill): same port, same directory;
    /// returns once it accepts connections.
    pub fn start(&self) -> Result<()> {
        if self.is_running() {
            bail!("PostgreSQL on port {} is already running", self.port);
        }
        self.pg_ctl_start().map_err(|(err, _)| err)
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        run_checked(
            server_command("pg_ctl", &self.root)
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"]),
            &format!("pg_ctl stop -m {mode}"),
        )
        .map(|_| ())
    }

    /// `pg_ctl stop -m fast -w`: clean shutdown with a checkpoint.
    pub fn stop_fast(&self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// `pg_ctl stop -m immediate -w`: no checkpoint, crash recovery on the next start.
    pub fn stop_immediate(&self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// The postmaster's pid from `postmaster.pid`, `None` when the file is absent.
    pub fn postmaster_pid(&self) -> Result<Option<i32>> {
        let path = self.data.join("postmaster.pid");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let pid = text
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("no pid in {}", path.display()))?;
        Ok(Some(pid))
    }

    /// True when the postmaster process is alive.
    pub fn is_running(&self) -> bool {
        matches!(self.postmaster_pid(), Ok(Some(pid)) if pid_alive(pid))
    }

    /// Crashes the server: SIGKILL to the postmaster and its child processes (backends and
    /// auxiliary processes), like a machine losing power for everything not yet on disk.
    /// Returns once all of them are gone and the port refuses connections.
    pub fn kill(&self) -> Result<()> {
        let pid = self
            .postmaster_pid()?
            .filter(|&pid| pid_alive(pid))
            .with_context(|| format!("PostgreSQL on port {} is not running", self.port))?;
        // Freeze the postmaster so it cannot fork new children while we collect them.
        send_signal(pid, Signal::SIGSTOP)?;
        let kids = children(pid);
        send_signal(pid, Signal::SIGKILL)?;
        for &kid in &kids {
            send_signal(kid, Signal::SIGKILL)?;
        }
        poll_until(
            "the killed postmaster and its children to exit",
            Duration::from_secs(30),
            || Ok((!pid_alive(pid) && kids.iter().all(|&k| !pid_alive(k))).then_some(())),
        )?;
        // A zombie postmaster that its parent (often pid 1, which reaps about once a second
        // here) has not reaped yet still counts as "another postmaster" in the next start's
        // lock file checks (data directory and unix socket). Every process of the cluster is
        // dead, so both lock files are stale: remove them. (PostgreSQL itself cleans up the
        // orphaned shared memory on the next start.)
        let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [self.data.join("postmaster.pid"), socket_lock] {
            match std::fs::remove_file(&lock) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("removing {}", lock.display()))
                }
            }
        }
        poll_until(
            "the port of the killed server to refuse connections",
            Duration::from_secs(10),
            || Ok((!accepts_connections(self.port)).then_some(())),
        )
    }
}
