//! Connecting to the two databases, with errors that name the side and never the password.

use anyhow::Result;
pub use switchyard_core::connect::Db;
use switchyard_core::connect::{WriteMode, Writer};
use tokio_postgres::Client;

const APPLICATION: &str = "switchyard-reconciler";

/// Opens one connection; its driver task runs on the current runtime.
pub async fn connect(db: Db, url: &str) -> Result<Client> {
    Ok(switchyard_core::connect::connect(db, url, APPLICATION).await?)
}

/// Opens a session that writes rows into `db` (replay's and repair's re-syncs): the
/// database's own triggers and foreign-key checks and actions do not fire on it, and a
/// role that may not set that up is refused with the fix.
pub async fn connect_writer(db: Db, url: &str) -> Result<Writer> {
    Ok(switchyard_core::connect::connect_writer(db, url, APPLICATION, WriteMode::Replica).await?)
}
