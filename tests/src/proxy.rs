//! switchyard-proxy for tests: in-process on `127.0.0.1:0` (fast, white-box), or the real
//! binary as a child process (black-box: flags, signals, exit codes).

use crate::pg::PgCluster;
use crate::wait::poll_until;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use switchyard_proxy::{ProxyConfig, RunningProxy};

/// The database every proxy test uses on both clusters.
pub const DB: &str = "app";

/// An old and a new cluster, each with database [`DB`].
pub struct Pair {
    pub old: PgCluster,
    pub new: PgCluster,
}

impl Pair {
    /// Two trust-auth clusters; the new one can prepare transactions (dual writes need it).
    pub fn start() -> Result<Pair> {
        Self::start_with(PgCluster::builder(), PgCluster::builder())
    }

    pub fn start_with(old: crate::PgClusterBuilder, new: crate::PgClusterBuilder) -> Result<Pair> {
        Self::start_as_built(old, new.max_prepared_transactions(64))
    }

    /// Two clusters, neither of which can prepare transactions (PostgreSQL's default, and
    /// many managed services'): dual writes need `mirror.mode = "lockstep"`.
    pub fn start_without_prepare() -> Result<Pair> {
        Self::start_as_built(
            PgCluster::builder(),
            PgCluster::builder().max_prepared_transactions(0),
        )
    }

    fn start_as_built(old: crate::PgClusterBuilder, new: crate::PgClusterBuilder) -> Result<Pair> {
        let old = old.start().context("starting the old cluster")?;
        let new = new.start().context("starting the new cluster")?;
        old.create_database(DB)?;
        new.create_database(DB)?;
        Ok(Pair { old, new })
    }

    /// A proxy config for this pair, listening on free loopback ports.
    pub fn config(&self) -> ProxyConfig {
        let mut c = ProxyConfig::new(self.old.url(DB), self.new.url(DB));
        c.listen = "127.0.0.1:0".into();
        c.admin_listen = "127.0.0.1:0".into();
        c.health_check_interval_secs = 1;
        c
    }
}

/// Starts a proxy inside the test process.
pub async fn start_proxy(config: ProxyConfig) -> Result<RunningProxy> {
    switchyard_proxy::start(config)
        .await
        .context("starting the proxy in-process")
}

/// A libpq-style URL for connecting to a proxy as `user` (no password: trust mode).
pub fn proxy_url(proxy: &RunningProxy, user: &str) -> String {
    format!("postgres://{user}@{}/{DB}", proxy.listen_addr())
}

/// A tokio-postgres config pointing at a proxy.
pub fn proxy_config(
    proxy: &RunningProxy,
    user: &str,
    password: Option<&str>,
) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(proxy.listen_addr().port())
        .user(user)
        .dbname(DB)
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        c.password(p);
    }
    c
}

/// Connects tokio-postgres to a proxy as the superuser (trust mode); the connection task
/// runs on the current runtime.
pub async fn connect_proxy(proxy: &RunningProxy) -> Result<tokio_postgres::Client> {
    let (client, conn) = proxy_config(proxy, PgCluster::USER, None)
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the proxy")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Path of the `switchyard-proxy` binary: `SWITCHYARD_PROXY_BIN`, else next to the test
/// executable's target directory (`scripts/test.sh` puts it there).
pub fn proxy_bin() -> Result<PathBuf> {
    crate::process::workspace_bin("switchyard-proxy", "SWITCHYARD_PROXY_BIN")
}

/// The real proxy binary running as a child process. Killed on drop.
pub struct ProxyProcess {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    log: tempfile::NamedTempFile,
}

impl ProxyProcess {
    /// Spawns the binary with `args` plus `--listen`/`--admin-listen` on free ports and
    /// waits until it accepts connections.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<ProxyProcess> {
        let port = crate::free_port();
        let admin_port = crate::free_port();
        let log = tempfile::NamedTempFile::new().context("creating the proxy log file")?;
        let bin = proxy_bin()?;
        crate::process::require_failpoints_for(&bin, env)?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning switchyard-proxy")?;
        let mut p = ProxyProcess {
            child: Some(child),
            port,
            admin_port,
            log,
        };
        poll_until(
            "the proxy to accept connections",
            Duration::from_secs(20),
            || {
                if let Some(status) = p.try_wait()? {
                    bail!(
                        "switchyard-proxy exited with {status} during start:\n{}",
                        p.log_text()
                    );
                }
                Ok(crate::ports::accepts_connections(port).then_some(()))
            },
        )?;
        Ok(p)
    }

    /// The binary in front of `pair` (`--old`, `--new`), with `env`; blocks while it starts.
    pub fn spawn_for(pair: &Pair, env: &[(&str, &str)]) -> Result<ProxyProcess> {
        let (old, new) = (pair.old.url(DB), pair.new.url(DB));
        ProxyProcess::spawn(&["--old", &old, "--new", &new], env)
    }

    /// A tokio-postgres client through this proxy, its connection driven in the background.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        let url = format!(
            "postgres://{}@127.0.0.1:{}/{DB}",
            crate::PgCluster::USER,
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .context("connecting through the proxy")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().context("checking the proxy process"),
            None => bail!("proxy process already reaped"),
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let pid = self.pid().context("proxy process already reaped")? as i32;
        crate::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = poll_until("the proxy to exit", timeout, || self.try_wait())?;
        self.child = None;
        Ok(status)
    }

    /// Everything the proxy printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the proxy binary to completion (for flag and config errors) and returns its exit
/// status and combined output.
pub fn run_proxy_to_exit(args: &[&str], env: &[(&str, &str)]) -> Result<(ExitStatus, String)> {
    let mut cmd = Command::new(proxy_bin()?);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running switchyard-proxy")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status, text))
}

/// Runs each of `statements` on `c` as its own simple Query, in order; the error names the
/// statement that failed.
pub async fn batch_each(c: &tokio_postgres::Client, statements: &[&str]) -> Result<()> {
    for sql in statements {
        c.batch_execute(sql)
            .await
            .with_context(|| sql.to_string())?;
    }
    Ok(())
}

/// Polls (for up to 10 s) until `proxy` holds exactly `n` client sessions.
pub async fn wait_for_sessions(proxy: &RunningProxy, n: usize, what: &str) -> Result<()> {
    crate::wait::poll_until_async(what, Duration::from_secs(10), || async {
        Ok((proxy.active_sessions() == n).then_some(()))
    })
    .await
}

/// Runs `sql` (one simple Query) on `c`, which must fail with the server's SQLSTATE
/// `state`; that error.
pub async fn batch_fails(
    c: &tokio_postgres::Client,
    sql: &str,
    state: &tokio_postgres::error::SqlState,
) -> Result<tokio_postgres::error::DbError> {
    let Err(e) = c.batch_execute(sql).await else {
        bail!("{sql}: succeeded, want SQLSTATE {}", state.code());
    };
    let db = e
        .as_db_error()
        .with_context(|| format!("{sql}: not a server error: {e:?}"))?;
    anyhow::ensure!(
        db.code() == state,
        "{sql}: SQLSTATE {} ({}), want {}",
        db.code().code(),
        db.message(),
        state.code()
    );
    Ok(db.clone())
}
