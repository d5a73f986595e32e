//! Connecting to the two databases, with errors that name the side and never the password.

use anyhow::{Context, Result};
use switchyard_core::session::pin_settings;
use tokio_postgres::Client;

pub use switchyard_core::connect::{shown, Db};

/// Opens one connection with pinned session settings (the checksums compare text forms);
/// `statement_timeout_ms` > 0 bounds every statement of the session. The driver task runs
/// on the current runtime.
pub async fn connect(db: Db, url: &str, statement_timeout_ms: u64) -> Result<Client> {
    let client = switchyard_core::connect::connect(db, url, "switchyard-backfill").await?;
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
