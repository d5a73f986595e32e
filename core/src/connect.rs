//! Connecting to the old or the new database from the offline tools, with errors that name
//! the side and show the URL without its password.

use std::time::Duration;
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

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the {db} database URL {shown} is not valid")]
    Url {
        db: Db,
        shown: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to the {db} database at {shown}")]
    Connect {
        db: Db,
        shown: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// `url` for people: without credentials.
pub fn shown(url: &str) -> String {
    crate::dsn::Dsn::parse(url)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| "(unparsable URL)".to_string())
}

/// Opens one connection (10 s connect timeout unless the URL sets one); its driver task
/// runs on the current runtime.
pub async fn connect(db: Db, url: &str, application_name: &str) -> Result<Client, ConnectError> {
    let mut config: Config = url.parse().map_err(|source| ConnectError::Url {
        db,
        shown: shown(url),
        source,
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name(application_name);
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|source| ConnectError::Connect {
                db,
                shown: shown(url),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%db, %err, "Connection ended.");
        }
    });
    Ok(client)
}
