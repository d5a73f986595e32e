//! Connecting to the two databases, with errors that name the side and never the password.

use anyhow::Result;
pub use switchyard_core::connect::Db;
use tokio_postgres::Client;

/// Opens one connection; its driver task runs on the current runtime.
pub async fn connect(db: Db, url: &str) -> Result<Client> {
    Ok(switchyard_core::connect::connect(db, url, "switchyard-reconciler").await?)
}
