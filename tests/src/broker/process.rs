//! [`Broker`]: the tansu broker process and its lifecycle (start, stop, kill, restart, drop).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;

use super::binary::tansu_bin;
use crate::logs;
use crate::ports::{accepts_connections, try_free_port};
use crate::process::send_signal;
use crate::reap::{new_dir, release_dir, write_owner};
use crate::wait::poll_until;

const PORT_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Name prefix of broker directories.
const DIR_PREFIX: &str = "switchyard-broker-";
/// The broker's pid, for [`kill_orphan`].
const PID_FILE: &str = "tansu.pid";

/// Kills the broker of an orphaned broker directory (see [`crate::reap`]).
fn kill_orphan(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("tansu") {
        let _ = send_signal(pid, Signal::SIGKILL);
    }
}

/// A running tansu broker on 127.0.0.1 with in-memory storage. Dropping it kills the process
/// and removes its temporary directory (the log), unless `SWITCHYARD_KEEP_CLUSTERS=1`.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port and waits until it answers a metadata request.
    pub fn start() -> Result<Broker> {
        let bin = tansu_bin()?;
        let dir = new_dir(
            &std::env::temp_dir(),
            DIR_PREFIX,
            kill_orphan,
            "the broker's temporary directory",
        )?;
        let mut broker = Broker {
            bin,
            log: dir.join("tansu.log"),
            dir,
            port: 0,
            child: None,
        };
        write_owner(&broker.dir)?;
        let mut attempt = 1;
        loop {
            broker.port = try_free_port()?;
            let before = logs::len(&broker.log);
            match broker.spawn_and_wait() {
                Ok(()) => return Ok(broker),
                Err(err) => {
                    let _ = broker.kill();
                    let new_log = logs::since(&broker.log, before);
                    let port_taken =
                        new_log.contains("Address already in use") || new_log.contains("AddrInUse");
                    if !port_taken || attempt >= PORT_ATTEMPTS {
                        return Err(err);
                    }
                    attempt += 1;
                }
            }
        }
    }

    fn listener_url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating {}", self.log.display()))?;
        let url = self.listener_url();
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu loads a `.env` file (dotenv: the working directory and its parents): run it
            // in its own directory so that the repository's `.env`, if any, is not read.
            .current_dir(&self.dir)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // Plain log lines (its tracing output is coloured by default, even into a file).
            .env("NO_COLOR", "1")
            .env_remove("SCHEMA_REGISTRY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let pid = child.id();
        self.child = Some(child);
        let pid_file = self.dir.join(PID_FILE);
        std::fs::write(&pid_file, pid.to_string())
            .with_context(|| format!("writing {}", pid_file.display()))?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let port = self.port;
        let result = poll_until(
            "the broker to accept TCP connections",
            READY_TIMEOUT,
            || {
                self.check_alive()?;
                Ok(accepts_connections(port).then_some(()))
            },
        )
        .and_then(|()| {
            let probe = self.probe_client()?;
            let left = READY_TIMEOUT.saturating_sub(started.elapsed());
            poll_until("the broker to answer a metadata request", left, || {
                self.check_alive()?;
                Ok(Self::metadata_ok(&probe).then_some(()))
            })
        });
        result.map_err(|err| self.with_log(err))
    }

    /// Fails when the broker process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().context("checking the broker process")? {
                self.child = None;
                bail!("the broker exited: {status}");
            }
        }
        Ok(())
    }

    fn with_log(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "tansu broker on port {}: {err:#}\n--- tail of {} ---\n{}",
            self.port,
            self.log.display(),
            logs::tail(&self.log, logs::TAIL_LINES)
        )
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// True while the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok() && self.child.is_some()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 15 s).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id()).context("broker pid out of range")?;
        send_signal(pid, Signal::SIGTERM)?;
        let exited = poll_until("the broker to exit after SIGTERM", STOP_TIMEOUT, || {
            Ok(child
                .try_wait()
                .context("waiting for the broker")?
                .map(|_| ()))
        });
        if let Err(err) = exited {
            let _ = child.kill();
            let _ = child.wait();
            return Err(self.with_log(err));
        }
        Ok(())
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // kill() fails only if the child was already reaped; wait() below tells the truth.
        let _ = child.kill();
        child.wait().context("waiting for the killed broker")?;
        Ok(())
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing is answered, the
    /// worst case for a producer waiting on a confirmation.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a [`pause`](Self::pause)d broker run again (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .context("the broker is not running")?
            .id() as i32;
        send_signal(pid, sig)
    }

    /// Stops the broker (SIGTERM) and starts a new process on the same port. The in-memory
    /// storage does not survive this: topics, messages and committed offsets are gone.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Starts the process again on the same port after [`stop`](Self::stop) or
    /// [`kill`](Self::kill) (with empty storage).
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("the broker on port {} is already running", self.port);
        }
        let port = self.port;
        poll_until(
            "the old broker's port to be free",
            Duration::from_secs(10),
            || Ok((!accepts_connections(port)).then_some(())),
        )?;
        self.spawn_and_wait()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = release_dir(&self.dir, &format!("broker log (port {})", self.port));
    }
}
