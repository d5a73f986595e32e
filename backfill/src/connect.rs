//! Connecting to the two databases, with errors that name the side and never the password.

use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_core::dsn::Dsn;
use switchyard_core::session::pin_settings;
use tokio_postgres::{Client, Config, NoTls};

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Old,
    New,
}

impl std::fmt::Display for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Old => "old",
            Db::New => "new",
        })
    }
}

/// `url` for people: without credentials.
pub fn shown(url: &str) -> String {
    Dsn::parse(url)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| "(unparsable URL)".to_string())
}

/// Opens one connection with pinned session settings (the checksums compare text forms);
/// `statement_timeout_ms` > 0 bounds every statement of the session. The driver task runs
/// on the current runtime.
pub async fn connect(db: Db, url: &str, statement_timeout_ms: u64) -> Result<Client> {
    let shown = shown(url);
    let mut config: Config = url
        .parse()
        .with_context(|| format!("the {db} database URL {shown} is not valid"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("switchyard-backfill");
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to the {db} database at {shown}"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%db, %err, "Connection ended.");
        }
    });
    pin_settings(&client)
        .await
        .with_context(|| format!("setting up the session on the {db} database"))?;
    // COPY (SELECT ...) carries its bounds as literals, which assume standard strings.
    client
        .batch_execute(&format!(
            "SET standard_conforming_strings = on; SET statement_timeout = {statement_timeout_ms}"
        ))
        .await
        .with_context(|| format!("setting up the session on the {db} database"))?;
    Ok(client)
}
