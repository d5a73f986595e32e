//! The proxy's own connection to the primary for catalog lookups and setup, separate from
//! client sessions; reconnects after a failure.

use super::MirrorError;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::dsn::Dsn;
use tokio::sync::Mutex;

pub struct Control {
    dsn: Dsn,
    connect_timeout: Duration,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Control {
    pub fn new(dsn: Dsn, connect_timeout: Duration) -> Self {
        Control {
            dsn,
            connect_timeout,
            client: Mutex::new(None),
        }
    }

    pub fn dsn(&self) -> &Dsn {
        &self.dsn
    }

    pub async fn client(&self) -> Result<Arc<tokio_postgres::Client>, MirrorError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c =
            Arc::new(connect(&self.dsn, "switchyard-control", None, self.connect_timeout).await?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// Opens a tokio-postgres connection for the proxy's own use, with `options` (`-c ...`) sent
/// at startup, and drives it in the background.
pub async fn connect(
    dsn: &Dsn,
    application_name: &str,
    options: Option<&str>,
    timeout: Duration,
) -> Result<tokio_postgres::Client, MirrorError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&dsn.host)
        .port(dsn.port)
        .user(&dsn.user)
        .dbname(&dsn.dbname)
        .application_name(application_name)
        .connect_timeout(timeout);
    if let Some(p) = &dsn.password {
        cfg.password(p);
    }
    if let Some(o) = options {
        cfg.options(o);
    }
    let tls =
        switchyard_core::tls::settings_for(dsn).map_err(|e| MirrorError::Connect(e.to_string()))?;
    let connector = switchyard_core::tls_stream::pg_connector(&mut cfg, &tls);
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(connector))
        .await
        .map_err(|_| MirrorError::Connect(format!("{dsn}: timed out after {timeout:?}")))?
        .map_err(|e| MirrorError::Connect(format!("{dsn}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "A mirror connection ended.");
        }
    });
    Ok(client)
}
