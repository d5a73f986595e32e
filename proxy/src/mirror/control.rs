//! The proxy's own connection to the primary for catalog lookups and setup, separate from
//! client sessions; reconnects after a failure.

use super::MirrorError;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::connect::{open, ConnectError, SessionOptions, Target};
use switchyard_core::db::Db;
use switchyard_core::dsn::Dsn;
use tokio::sync::Mutex;

pub struct Control {
    db: Db,
    dsn: Dsn,
    connect_timeout: Duration,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Control {
    pub fn new(db: Db, dsn: Dsn, connect_timeout: Duration) -> Self {
        Control {
            db,
            dsn,
            connect_timeout,
            client: Mutex::new(None),
        }
    }

    pub fn dsn(&self) -> &Dsn {
        &self.dsn
    }

    /// The database this is the control connection of.
    pub fn db(&self) -> Db {
        self.db
    }

    pub async fn client(&self) -> Result<Arc<tokio_postgres::Client>, MirrorError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = connect(
            self.db,
            &self.dsn,
            "switchyard-control",
            None,
            self.connect_timeout,
        )
        .await?;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// Opens a session for the proxy's own use ([`switchyard_core::connect::open`]), with
/// `options` (`-c ...`) sent at startup, all of it within `timeout`; its driver runs in the
/// background.
pub async fn connect(
    db: Db,
    dsn: &Dsn,
    application_name: &str,
    options: Option<&str>,
    timeout: Duration,
) -> Result<tokio_postgres::Client, MirrorError> {
    let opts = SessionOptions {
        options,
        timeout: Some(timeout),
    };
    open(db, Target::Dsn(dsn), application_name, opts)
        .await
        .map_err(|e| {
            // The side is the caller's to say; the address and the driver's reason are ours.
            MirrorError::Connect(match e {
                ConnectError::Connect { shown, source, .. } => format!("{shown}: {source}"),
                other => other.chain(),
            })
        })
}
