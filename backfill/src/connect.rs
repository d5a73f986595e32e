//! Connecting to the two databases, with errors that name the side and never the password.

use anyhow::{Context, Result};
use switchyard_core::connect::{WriteMode, Writer};
use switchyard_core::copy_conn::CopyConn;
use switchyard_core::session::{pin_settings, PINNED_SETTINGS};
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
    client
        .batch_execute(&session_setup(statement_timeout_ms))
        .await
        .with_context(|| format!("setting up the session on the {db} database"))?;
    Ok(client)
}

/// A session that loads rows into new (copies, merges, repairs): [`connect`]'s, made a
/// [`Writer`] with `mode` (by default new's triggers and foreign-key checks and actions
/// do not fire on it).
pub async fn connect_writer(url: &str, mode: WriteMode) -> Result<Writer> {
    let client = connect(Db::New, url, 0).await?;
    Ok(Writer::set_up(client, Db::New, mode).await?)
}

// COPY (SELECT ...) carries its bounds as literals, which assume standard strings.
fn session_setup(statement_timeout_ms: u64) -> String {
    format!("SET standard_conforming_strings = on; SET statement_timeout = {statement_timeout_ms}")
}

/// A session for COPY reads (`core::copy_conn`), set up like [`connect`]'s and for range
/// reads (sequential scans off, as on the worker's other sessions).
pub async fn connect_copy(db: Db, url: &str, statement_timeout_ms: u64) -> Result<CopyConn> {
    let mut conn = CopyConn::connect(url, "switchyard-backfill")
        .await
        .with_context(|| format!("connecting to the {db} database at {} for COPY", shown(url)))?;
    conn.execute(&format!(
        "{PINNED_SETTINGS}; {}; SET enable_seqscan = off",
        session_setup(statement_timeout_ms)
    ))
    .await
    .with_context(|| format!("setting up the COPY session on the {db} database"))?;
    Ok(conn)
}
