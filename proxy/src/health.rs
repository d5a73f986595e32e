//! Reachability of old and new, checked in the background so `/api/status` and the
//! `switchyard_backend_up` gauge answer without touching the databases on request.

use crate::backend::{connect, ConnectOptions, Db};
use crate::metrics::BACKEND_UP;
use serde::Serialize;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use switchyard_core::dsn::Dsn;

#[derive(Debug, Clone, Serialize, Default)]
pub struct BackendHealth {
    pub reachable: Option<bool>,
    /// Connect-and-authenticate time of the last check, in milliseconds.
    pub connect_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Seconds since the Unix epoch of the last check.
    pub checked_at: Option<u64>,
}

#[derive(Default)]
pub struct Health {
    old: RwLock<BackendHealth>,
    new: RwLock<BackendHealth>,
}

impl Health {
    fn slot(&self, role: Db) -> &RwLock<BackendHealth> {
        match role {
            Db::Old => &self.old,
            Db::New => &self.new,
        }
    }

    pub fn get(&self, role: Db) -> BackendHealth {
        self.slot(role)
            .read()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    fn set(&self, role: Db, h: BackendHealth) {
        if let Ok(mut g) = self.slot(role).write() {
            *g = h;
        }
    }

    /// Checks one database now.
    pub async fn check(&self, role: Db, dsn: &Dsn, opts: &ConnectOptions) {
        let start = std::time::Instant::now();
        let params = [(
            "application_name".to_string(),
            "switchyard-health".to_string(),
        )];
        let result = connect(role, dsn, &params, opts).await;
        let checked_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        let h = match result {
            Ok(conn) => {
                drop(conn);
                BackendHealth {
                    reachable: Some(true),
                    connect_ms: Some(start.elapsed().as_secs_f64() * 1000.0),
                    last_error: None,
                    checked_at,
                }
            }
            Err(e) => BackendHealth {
                reachable: Some(false),
                connect_ms: None,
                last_error: Some(e.to_string()),
                checked_at,
            },
        };
        metrics::gauge!(BACKEND_UP, "role" => role.as_str()).set(if h.reachable == Some(true) {
            1.0
        } else {
            0.0
        });
        self.set(role, h);
    }
}

/// Checks both databases every `interval` until the shutdown signal.
/// Checks both databases every `interval` until shutdown.
pub async fn run(
    health: Arc<Health>,
    old: Dsn,
    new: Dsn,
    opts: ConnectOptions,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::join!(
            health.check(Db::Old, &old, &opts),
            health.check(Db::New, &new, &opts)
        );
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
