//! [`PgCluster`]: one throwaway PostgreSQL server: its options ([`PgClusterBuilder`]),
//! creating its directory, accessors, drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::bin::{chown_to_postgres, server_command};
use super::config::{self, Auth};
use super::template::template_dir;
use crate::ports::try_free_port;
use crate::process::run_checked;
use crate::reap::{new_dir, release_dir, write_owner};

/// How often [`PgCluster::create`] picks a new port when the chosen one turned out taken.
const PORT_ATTEMPTS: usize = 3;

/// Name prefix of cluster directories.
const DIR_PREFIX: &str = "switchyard-pg-";

/// Stops the server of an orphaned cluster directory (see [`crate::reap`]).
fn stop_orphan(dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let _ = run_checked(
            server_command("pg_ctl", dir).arg("-D").arg(&data).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ]),
            "pg_ctl stop (orphaned cluster)",
        );
    }
}

/// Where cluster directories are created: `$SWITCHYARD_PG_TMPDIR`, else `/dev/shm` when it is
/// a writable directory, else `std::env::temp_dir()`. (Creating the ~1000 files of a cluster
/// costs about 1 s on this machine's ext4 and under 0.1 s on tmpfs. Data on tmpfs survives a
/// killed server, which is all the crash tests simulate, but uses RAM: point
/// `SWITCHYARD_PG_TMPDIR` at a disk for large data sets.)
pub fn clusters_parent_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_PG_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// A running PostgreSQL cluster in its own temporary directory, listening on 127.0.0.1 and on
/// a private unix socket directory. Dropping it stops the server (immediate mode) and removes
/// the directory, also when the test panics; `SWITCHYARD_KEEP_CLUSTERS=1` keeps the directory.
#[derive(Debug)]
pub struct PgCluster {
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) port: u16,
    pub(super) auth: Auth,
    tls: Option<crate::tls_certs::ServerTls>,
    /// Server settings without `port` (it is written separately, see [`Self::write_settings`]).
    settings: Vec<(String, String)>,
}

impl PgCluster {
    /// The superuser's name.
    pub const USER: &'static str = "postgres";
    /// The superuser's password on md5 and scram clusters (URL-safe).
    pub const PASSWORD: &'static str = "switchyard-test-pw";

    /// Options for a new cluster; finish with [`PgClusterBuilder::start`].
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    pub(super) fn create(opts: PgClusterBuilder) -> Result<PgCluster> {
        let template = template_dir()?;
        let root = new_dir(
            &clusters_parent_dir(),
            DIR_PREFIX,
            stop_orphan,
            "the cluster's temporary directory",
        )?;
        let mut settings = vec![
            ("listen_addresses".to_string(), "127.0.0.1".to_string()),
            (
                "unix_socket_directories".to_string(),
                root.join("sock").display().to_string(),
            ),
            (
                "max_prepared_transactions".to_string(),
                opts.max_prepared_transactions.to_string(),
            ),
        ];
        if let Some(encryption) = opts.auth.password_encryption() {
            settings.push(("password_encryption".into(), encryption.into()));
        }
        if !opts.durable {
            for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                settings.push((name.into(), "off".into()));
            }
        }
        if opts.tls.is_some() {
            // Copied into the data directory by `prepare_dir` (the server reads them as
            // the postgres user).
            for (name, value) in [
                ("ssl", "on"),
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
                ("ssl_ca_file", "ca.crt"),
            ] {
                settings.push((name.into(), value.into()));
            }
        }
        settings.extend(opts.settings);
        // From here on, Drop cleans up whatever exists.
        let mut cluster = PgCluster {
            data: root.join("data"),
            socket_dir: root.join("sock"),
            log: root.join("postgres.log"),
            root,
            port: 0,
            auth: opts.auth,
            tls: opts.tls,
            settings,
        };
        write_owner(&cluster.root)?;
        cluster.prepare_dir(&template)?;
        cluster.first_start()?;
        if cluster.auth.needs_password() {
            cluster
                .psql(
                    "postgres",
                    &format!("ALTER USER {} PASSWORD '{}'", Self::USER, Self::PASSWORD),
                )
                .context("setting the superuser's password")?;
        }
        Ok(cluster)
    }

    fn prepare_dir(&self, template: &Path) -> Result<()> {
        chown_to_postgres(&self.root)?;
        std::fs::create_dir(&self.socket_dir)
            .with_context(|| format!("creating {}", self.socket_dir.display()))?;
        chown_to_postgres(&self.socket_dir)?;
        run_checked(
            Command::new("cp").arg("-a").arg(template).arg(&self.data),
            "copying the initdb template",
        )?;
        config::write_hba(
            &self.data,
            self.auth,
            self.tls.as_ref().map(|t| t.client_cert),
        )?;
        chown_to_postgres(&self.data.join("pg_hba.conf"))?;
        if let Some(tls) = &self.tls {
            for (from, to) in [
                (&tls.cert.cert, "server.crt"),
                (&tls.cert.key, "server.key"),
                (&tls.ca_file, "ca.crt"),
            ] {
                let dest = self.data.join(to);
                std::fs::copy(from, &dest)
                    .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
                chown_to_postgres(&dest)?;
            }
            // The server refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                self.data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .context("restricting the server key's permissions")?;
        }
        Ok(())
    }

    fn write_settings(&self) -> Result<()> {
        let mut all = self.settings.clone();
        all.insert(0, ("port".into(), self.port.to_string()));
        config::write_settings(&self.data, &all)?;
        chown_to_postgres(&self.data.join(config::CONF_FILE))
    }

    /// Starts on a fresh port, trying another one if the port was taken meanwhile.
    fn first_start(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            self.port = try_free_port()?;
            self.write_settings()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err((err, port_taken)) if port_taken && attempt < PORT_ATTEMPTS => {
                    tracing::debug!("port {} taken, retrying: {err:#}", self.port);
                    attempt += 1;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The private unix socket directory (connect with `host=<this dir>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The cluster's temporary directory (data, socket dir, log).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// How TCP clients authenticate.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// The superuser's password: `Some(PASSWORD)` on md5/scram clusters, `None` on trust.
    pub fn password(&self) -> Option<&'static str> {
        self.auth.needs_password().then_some(Self::PASSWORD)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.is_running() && self.stop_immediate().is_err() {
            let _ = self.kill();
        }
        let what = format!("PostgreSQL cluster (port {})", self.port);
        if let Err(err) = release_dir(&self.root, &what) {
            if err.kind() != std::io::ErrorKind::NotFound {
                eprintln!("could not remove {}: {err}", self.root.display());
            }
        }
    }
}

/// Options for [`PgCluster::builder`]. Defaults: trust auth, `max_prepared_transactions = 10`,
/// not durable (fsync, synchronous_commit and full_page_writes off).
#[derive(Debug, Clone)]
pub struct PgClusterBuilder {
    pub(crate) auth: Auth,
    pub(crate) max_prepared_transactions: u32,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) durable: bool,
    pub(crate) tls: Option<crate::tls_certs::ServerTls>,
}

impl Default for PgClusterBuilder {
    fn default() -> Self {
        PgClusterBuilder {
            auth: Auth::Trust,
            max_prepared_transactions: 10,
            settings: Vec::new(),
            durable: false,
            tls: None,
        }
    }
}

impl PgClusterBuilder {
    /// How TCP clients authenticate (see [`Auth`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// `max_prepared_transactions` (two-phase commit needs it above 0).
    pub fn max_prepared_transactions(mut self, n: u32) -> Self {
        self.max_prepared_transactions = n;
        self
    }

    /// Any server setting, written to the configuration file after the harness's own (so it
    /// wins over them).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// `true` keeps PostgreSQL's crash safety (fsync etc.); needed by crash/kill tests.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// `ssl = on` with this certificate, and TCP clients accepted over TLS only
    /// (`hostssl` in `pg_hba.conf`; with `client_cert`, `clientcert=verify-full` too).
    pub fn tls(mut self, tls: crate::tls_certs::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Copies the template, configures and starts the cluster; waits until it accepts
    /// connections.
    pub fn start(self) -> Result<PgCluster> {
        PgCluster::create(self)
    }
}
