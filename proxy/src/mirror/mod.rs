//! Dual writes: the policy side. What a statement means for mirroring (`rewrite`), the
//! tables' facts (`catalog`), the session's secondary connection (`secondary`) and its
//! lockstep transaction (`txn`). The wire handling lives in `frontend::mediate`.

pub mod catalog;
pub mod control;
pub mod rewrite;
pub mod secondary;
pub mod startup;
pub mod status;
pub mod txn;

use crate::config::{DdlPolicy, MirrorConfig, MirrorMode};
use catalog::Catalog;
use control::Control;
use dashmap::DashMap;
use rewrite::Plan;
use std::sync::Arc;
use switchyard_core::dsn::Dsn;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{what} on the new database failed{}: {message}", sqlstate.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Secondary {
        what: String,
        sqlstate: Option<String>,
        message: String,
    },
}

impl MirrorError {
    /// SQLSTATE for metrics ("none" for timeouts and connection trouble).
    pub fn sqlstate(&self) -> &str {
        match self {
            MirrorError::Secondary {
                sqlstate: Some(s), ..
            } => s,
            MirrorError::Connect(_) => "connect",
            MirrorError::Catalog(_) => "catalog",
            _ => "timeout",
        }
    }
}

/// Mirroring state shared by all sessions.
pub struct Mirror {
    pub config: MirrorConfig,
    pub new: Dsn,
    pub instance: String,
    pub control: Control,
    pub catalog: Catalog,
    plans: DashMap<String, Arc<Plan>>,
    pub status: status::MirrorStatus,
}

const PLAN_CACHE_MAX: usize = 20_000;

impl Mirror {
    pub fn new(
        config: MirrorConfig,
        old: Dsn,
        new: Dsn,
        instance: String,
        connect_timeout: std::time::Duration,
    ) -> Option<Arc<Self>> {
        if config.mode == MirrorMode::Off {
            return None;
        }
        Some(Arc::new(Mirror {
            config,
            new,
            instance,
            control: Control::new(old, connect_timeout),
            catalog: Catalog::new(),
            plans: DashMap::new(),
            status: status::MirrorStatus::default(),
        }))
    }

    /// The plan for a statement string, cached by its exact text.
    pub fn plan(&self, sql: &str) -> Arc<Plan> {
        if let Some(p) = self.plans.get(sql) {
            return p.clone();
        }
        let mut p = rewrite::plan(sql);
        if let Plan::Statement { ddl: true, .. } = p {
            match self.config.ddl {
                DdlPolicy::Mirror => {}
                DdlPolicy::PrimaryOnly => {
                    p = Plan::Unmirrored {
                        reason: "DDL (ddl = primary-only)",
                    }
                }
                DdlPolicy::Reject => p = Plan::Rejected,
            }
        }
        let p = Arc::new(p);
        if self.plans.len() >= PLAN_CACHE_MAX {
            self.plans.clear();
        }
        self.plans.insert(sql.to_string(), p.clone());
        p
    }

    pub fn new_secondary(&self) -> secondary::Secondary {
        secondary::Secondary::new(
            self.new.clone(),
            std::time::Duration::from_millis(self.config.secondary_statement_timeout_ms),
            std::time::Duration::from_millis(self.config.secondary_lock_timeout_ms),
        )
    }

    /// Creates the retry log on the primary; a failure is reported, not fatal, because the
    /// primary may be briefly down at start (writes then fail clearly until it exists).
    pub async fn prepare_primary(&self) -> Result<(), MirrorError> {
        let c = self.control.client().await?;
        c.batch_execute(switchyard_core::retry::EMBEDDED_SCHEMA_SQL)
            .await
            .map_err(|e| {
                MirrorError::Catalog(format!(
                    "creating _switchyard.retry_log on the old database: {e}"
                ))
            })
    }
}
