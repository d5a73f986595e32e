//! What sessions share: config, users, caches, the dual writes and the cutover they follow,
//! and the shutdown signal. Background tasks and the admin server are given their own parts
//! (`server::start` hands them out), so that none of them imports this module.

use crate::auth::Secret;
use crate::backend::{ConnectOptions, Db};
use crate::cancel::CancelRegistry;
use crate::classify::Classifier;
use crate::config::ProxyConfig;
use crate::counters::Counters;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_core::direction::Direction;
use switchyard_core::dsn::Dsn;
use tokio::sync::watch;
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
    pub classifier: Arc<Classifier>,
    pub cancel: CancelRegistry,
    /// Sessions and statements counted, for the status API and the dashboard's history.
    pub counters: Arc<Counters>,
    pub shutdown: watch::Receiver<bool>,
    /// Dual writes with old as the primary; None when `mirror.mode = "off"`.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    /// Dual writes with new as the primary (the cutover's writes-new).
    pub mirror_back: Option<Arc<crate::mirror::Mirror>>,
    /// Shadow reads; None while no statement can be sampled.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
    /// The cutover phase this instance runs.
    pub cutover: Arc<crate::cutover::Live>,
    /// Connection to the old database's cutover control table (shared with the cutover
    /// API): lockstep reads look up type names over it.
    pub cutover_control: Arc<crate::mirror::control::Control>,
    /// Connection to the new database, likewise.
    pub new_control: Arc<crate::mirror::control::Control>,
}

impl Shared {
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            timeout: self.config.connect_timeout(),
            max_message_size: self.config.max_message_size,
        }
    }

    pub fn dsn(&self, role: Db) -> &Dsn {
        match role {
            Db::Old => &self.old,
            Db::New => &self.new,
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
