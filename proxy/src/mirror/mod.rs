//! Dual writes: the policy side. What a statement means for mirroring (`rewrite`), the
//! tables' facts (`catalog`), the session's secondary connection (`secondary`) and its
//! lockstep transaction (`txn`). The wire handling lives in `frontend::mediate`.

pub mod catalog;
pub mod control;
pub mod retry_kafka;
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
    /// Set when retry records go to Kafka (`retry_log.backend = "kafka"`).
    pub kafka: Option<Arc<retry_kafka::KafkaSink>>,
}

const PLAN_CACHE_MAX: usize = 20_000;

impl Mirror {
    pub fn new(
        config: MirrorConfig,
        old: Dsn,
        new: Dsn,
        instance: String,
        connect_timeout: std::time::Duration,
        kafka: Option<Arc<retry_kafka::KafkaSink>>,
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
            kafka,
        }))
    }

    /// What `/api/status` shows under `mirror`.
    pub fn snapshot(&self) -> status::MirrorSnapshot {
        let mut s = self.status.snapshot("two-phase");
        s.retry_log.backend = if self.kafka.is_some() {
            "kafka"
        } else {
            "embedded"
        };
        if let Some(k) = &self.kafka {
            use std::sync::atomic::Ordering;
            s.retry_log.kafka_confirmed = k.stats.records_confirmed.load(Ordering::Relaxed);
            s.retry_log.kafka_failed_batches = k.stats.batches_failed.load(Ordering::Relaxed);
            s.retry_log.kafka_last_error = k.stats.last_error.lock().ok().and_then(|e| e.clone());
            s.retry_log.kafka_on_failure = Some(match k.settings.on_failure {
                switchyard_core::retry_kafka::OnBrokerFailure::Embedded => "embedded",
                switchyard_core::retry_kafka::OnBrokerFailure::Fail => "fail",
            });
        }
        s
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
