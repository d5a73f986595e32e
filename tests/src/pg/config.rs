//! Cluster configuration files: `switchyard.conf` (included from `postgresql.conf`) and `pg_hba.conf`.
//!
//! Settings go into a file rather than onto the command line so that a restart after
//! [`PgCluster::kill`](super::PgCluster::kill) or a stop uses exactly the same configuration.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// The name of the harness's configuration file inside the data directory.
pub const CONF_FILE: &str = "switchyard.conf";

/// How TCP clients on 127.0.0.1 authenticate. Unix-socket connections are always `trust`
/// (the harness's own `psql` uses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// No password needed.
    #[default]
    Trust,
    /// `md5` in `pg_hba.conf`, passwords stored as MD5.
    Md5,
    /// `scram-sha-256` in `pg_hba.conf`, passwords stored as SCRAM.
    Scram,
}

impl Auth {
    /// The `pg_hba.conf` method name.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        }
    }

    /// The `password_encryption` setting this method needs, if any.
    pub fn password_encryption(self) -> Option<&'static str> {
        match self {
            Auth::Trust => None,
            Auth::Md5 => Some("md5"),
            Auth::Scram => Some("scram-sha-256"),
        }
    }

    /// True when TCP clients must send a password.
    pub fn needs_password(self) -> bool {
        self != Auth::Trust
    }
}

/// Quotes a value for `postgresql.conf`: single quotes, embedded quotes doubled.
pub fn quote_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Writes `data/switchyard.conf` from `settings` (later entries win) and makes
/// `postgresql.conf` include it (once).
pub fn write_settings(data: &Path, settings: &[(String, String)]) -> Result<()> {
    let mut text = String::from("# Written by the switchyard test harness.\n");
    for (name, value) in settings {
        let _ = writeln!(text, "{name} = {}", quote_value(value));
    }
    let conf = data.join(CONF_FILE);
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;

    let main = data.join("postgresql.conf");
    let current =
        std::fs::read_to_string(&main).with_context(|| format!("reading {}", main.display()))?;
    let include = format!("include = '{CONF_FILE}'");
    if !current.contains(&include) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&main)
            .with_context(|| format!("opening {}", main.display()))?;
        writeln!(file, "\n{include}")
            .with_context(|| format!("appending to {}", main.display()))?;
    }
    Ok(())
}

/// Replaces `data/pg_hba.conf`: local (unix socket) trust, TCP on 127.0.0.1 with `auth`;
/// with `tls`, TCP over TLS only (and with a client certificate when `client_cert`).
pub fn write_hba(data: &Path, auth: Auth, tls: Option<bool>) -> Result<()> {
    let method = auth.hba_method();
    let (kind, option) = match tls {
        None => ("host", ""),
        Some(false) => ("hostssl", ""),
        Some(true) => ("hostssl", " clientcert=verify-full"),
    };
    let text = format!(
        "# Written by the switchyard test harness.\n\
         local all all trust\n\
         local replication all trust\n\
         {kind} all all 127.0.0.1/32 {method}{option}\n\
         {kind} replication all 127.0.0.1/32 {method}{option}\n"
    );
    let path = data.join("pg_hba.conf");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
