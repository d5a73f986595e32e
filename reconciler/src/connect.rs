//! Connecting to the two databases, with errors that name the side and never the password.

use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_core::dsn::Dsn;
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

/// Opens one connection; its driver task runs on the current runtime.
pub async fn connect(db: Db, url: &str) -> Result<Client> {
    // Validated by the config already; shown without credentials.
    let shown = Dsn::parse(url)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| "(unparsable URL)".to_string());
    let mut config: Config = url
        .parse()
        .with_context(|| format!("the {db} database URL {shown} is not valid"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("switchyard-reconciler");
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to the {db} database at {shown}"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%db, %err, "Connection ended.");
        }
    });
    Ok(client)
}
