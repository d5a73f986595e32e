//! Talking to a [`PgCluster`]: connection URLs, `psql` over the unix socket, tokio-postgres clients.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use tokio_postgres::NoTls;

use super::bin::{bin_dir, psql_path};
use super::cluster::PgCluster;
use crate::process::run_checked;

/// Quotes an SQL identifier with double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgCluster {
    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/db`, without the password part on trust
    /// clusters.
    pub fn url(&self, db: &str) -> String {
        match self.password() {
            Some(password) => format!(
                "postgres://{}:{password}@{}:{}/{db}",
                Self::USER,
                self.host(),
                self.port
            ),
            None => format!(
                "postgres://{}@{}:{}/{db}",
                Self::USER,
                self.host(),
                self.port
            ),
        }
    }

    /// A tokio-postgres configuration for TCP on 127.0.0.1 as the superuser (with the password
    /// on md5/scram clusters); change it to try other credentials.
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host())
            .port(self.port)
            .user(Self::USER)
            .dbname(db)
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(password) = self.password() {
            config.password(password);
        }
        config
    }

    /// Runs `sql` with `psql -X -v ON_ERROR_STOP=1 -At -c` over the unix socket (always trust)
    /// and returns its output without the trailing newline(s). The error carries psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(psql_path());
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", Self::USER, "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        let out = run_checked(&mut cmd, &format!("psql on port {} ({db})", self.port))?;
        Ok(out.trim_end_matches('\n').to_string())
    }

    /// Runs a psql script read from stdin (`psql -X -q -v ON_ERROR_STOP=1 -f -`, so the
    /// meta-commands `pg_dump` writes work) and returns its output.
    pub fn psql_script(&self, db: &str, script: &str) -> Result<String> {
        let mut cmd = Command::new(psql_path());
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", Self::USER, "-d", db, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("psql script on port {} ({db})", self.port);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{what}: starting psql"))?;
        // Written from a thread: psql's output could fill its pipe while we still write.
        let mut stdin = child.stdin.take().context("psql's stdin")?;
        let script = script.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .with_context(|| format!("{what}: waiting for psql"))?;
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("{what}: writer panicked"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success(),
            "{what} failed ({}):\n{}",
            out.status,
            stderr.trim_end()
        );
        written.with_context(|| format!("{what}: writing the script"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string())
    }

    /// `pg_dump --schema-only` of `db` (plain SQL, no owners or grants), as users make the
    /// new database's schema from the old one; run it with [`Self::psql_script`].
    pub fn schema_dump(&self, db: &str) -> Result<String> {
        let mut cmd = Command::new(bin_dir().join("pg_dump"));
        cmd.args(["--schema-only", "--no-owner", "--no-privileges", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", Self::USER, "-d", db])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        run_checked(&mut cmd, &format!("pg_dump on port {} ({db})", self.port))
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(|_| ())
    }

    /// A tokio-postgres client over TCP (NoTls) as the superuser; the connection task is
    /// spawned on the current tokio runtime.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) = self
            .config(db)
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.url(db)))?;
        let port = self.port;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("connection to PostgreSQL on port {port} ended: {err}");
            }
        });
        Ok(client)
    }
}
