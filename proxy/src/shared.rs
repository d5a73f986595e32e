//! State every session and the admin server share: config, users, caches, counters, and the
//! shutdown signal.

use crate::auth::Secret;
use crate::backend::{ConnectOptions, Db as Role};
use crate::cancel::CancelRegistry;
use crate::classify::Classifier;
use crate::config::ProxyConfig;
use crate::health::Health;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;
use switchyard_core::direction::Direction;
use switchyard_core::dsn::Dsn;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

pub struct Shared {
    pub config: ProxyConfig,
    pub old: Dsn,
    pub new: Dsn,
    pub instance_id: String,
    pub users: HashMap<String, Secret>,
    /// Keyed by a per-process secret so mock SCRAM challenges for unknown users are stable
    /// but unpredictable.
    pub mock_secret: [u8; 32],
    pub tls: Option<TlsAcceptor>,
    pub classifier: Classifier,
    pub cancel: CancelRegistry,
    pub health: Health,
    pub connection_slots: Arc<Semaphore>,
    pub sessions_active: AtomicUsize,
    pub sessions_total: AtomicU64,
    /// Statements seen from clients (the Prometheus counter is process-wide and split by
    /// class; this one is this proxy's, for the dashboard's history).
    pub statements_total: AtomicU64,
    pub started: Instant,
    pub shutdown: watch::Receiver<bool>,
    /// Dual writes with old as the primary; None when `mirror.mode = "off"`.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    /// Dual writes with new as the primary (the cutover's writes-new).
    pub mirror_back: Option<Arc<crate::mirror::Mirror>>,
    /// Backfill progress read from the new database, for the dashboard.
    pub progress: crate::progress::Progress,
    /// The last minutes of counters, sampled for the dashboard's plots.
    pub history: crate::history::History,
    /// Shadow reads; None while no statement can be sampled.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
    /// The cutover phase this instance runs.
    pub cutover: Arc<crate::cutover::Live>,
    /// Connection to the old database's cutover control table, for the status API.
    pub cutover_control: crate::mirror::control::Control,
    /// Connection to the new database for the status API (its cache hit ratio).
    pub new_control: crate::mirror::control::Control,
}

impl Shared {
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            timeout: self.config.connect_timeout(),
            max_message_size: self.config.max_message_size,
        }
    }

    pub fn dsn(&self, role: Role) -> &Dsn {
        match role {
            Role::Old => &self.old,
            Role::New => &self.new,
        }
    }

    /// The dual writes of sessions whose primary is `direction`'s.
    pub fn mirror_for(&self, direction: Direction) -> Option<&Arc<crate::mirror::Mirror>> {
        match direction {
            Direction::OldToNew => self.mirror.as_ref(),
            Direction::NewToOld => self.mirror_back.as_ref(),
        }
    }

    /// The dual writes a session with `direction`'s primary runs now: none once the
    /// cutover is done (old detached).
    pub fn session_mirror(&self, direction: Direction) -> Option<Arc<crate::mirror::Mirror>> {
        if self.cutover.detached() {
            return None;
        }
        self.mirror_for(direction).cloned()
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Resolves once shutdown was requested (or the sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
