//! Dual writes: the policy side. What a statement means for mirroring (`plan`), the
//! captured tables' facts (`tables`), the session's secondary connection (`secondary`) and
//! its lockstep transaction (`txn`), and what runs in the background (`startup`: capture
//! install, in-doubt recovery, the change-log drain). The wire handling lives in
//! `crate::lockstep`.

pub mod control;
pub mod intent_commit;
pub mod intents;
pub mod plan;
pub mod retry_kafka;
pub mod routines;
pub mod secondary;
pub mod startup;
pub mod status;
pub mod tables;
pub mod txn;

use crate::config::{DdlPolicy, MirrorConfig, MirrorMode};
use control::Control;
use dashmap::DashMap;
use plan::Plan;
use std::sync::Arc;
use switchyard_core::direction::Direction;
use switchyard_core::dsn::Dsn;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{what} on the {side} database failed{}: {message}", sqlstate.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Secondary {
        side: switchyard_core::db::Db,
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

/// Mirroring state shared by the sessions of one direction (old primary and new secondary,
/// or, from the cutover's `writes-new` on, the other way round).
pub struct Mirror {
    pub config: MirrorConfig,
    pub direction: Direction,
    /// The secondary's URL (the primary's is the control connection's).
    pub secondary: Dsn,
    pub instance: String,
    pub control: Control,
    pub tables: tables::Tables,
    pub routines: routines::RoutineSet,
    // Looked up by the statement's text on every Parse and simple Query: foldhash, as the
    // classifier's cache.
    plans: DashMap<String, Arc<Plan>, foldhash::fast::RandomState>,
    pub status: status::MirrorStatus,
    /// Set when retry records go to Kafka (`retry_log.backend = "kafka"`).
    pub kafka: Option<Arc<retry_kafka::KafkaSink>>,
    /// Capture is to be kept installed on this direction's primary. Always for old to new;
    /// new to old from the first time writes are about to move to new (capture costs new
    /// nothing before).
    active: std::sync::atomic::AtomicBool,
    /// The cutover is done: nothing of this direction runs any more (no drain of the
    /// change log, no capture install).
    detached: std::sync::atomic::AtomicBool,
    /// Lockstep mode's settled intents, deleted in batches.
    pub intents: intents::Sweeper,
}

const PLAN_CACHE_MAX: usize = 20_000;

impl Mirror {
    pub fn new(
        config: MirrorConfig,
        direction: Direction,
        primary: Dsn,
        secondary: Dsn,
        instance: String,
        connect_timeout: std::time::Duration,
        kafka: Option<Arc<retry_kafka::KafkaSink>>,
    ) -> Option<Arc<Self>> {
        if config.mode == MirrorMode::Off {
            return None;
        }
        Some(Arc::new(Mirror {
            config,
            direction,
            secondary,
            instance,
            control: Control::new(direction.primary(), primary, connect_timeout),
            tables: tables::Tables::default(),
            routines: routines::RoutineSet::default(),
            plans: DashMap::with_hasher(Default::default()),
            status: status::MirrorStatus::default(),
            kafka,
            active: std::sync::atomic::AtomicBool::new(direction == Direction::OldToNew),
            detached: std::sync::atomic::AtomicBool::new(false),
            intents: intents::Sweeper::default(),
        }))
    }

    /// Commits record intents on the primary instead of preparing on the secondary.
    pub fn intents_mode(&self) -> bool {
        self.config.mode == MirrorMode::Lockstep
    }

    pub fn active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire)
            && !self.detached.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_detached(&self) -> bool {
        self.detached.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Old is detached (the cutover is done): this direction stops for good.
    pub fn detach(&self) {
        self.detached
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// From now on capture is kept installed on this direction's primary.
    pub fn activate(&self) {
        self.active
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// What `/api/status` shows under `mirror`.
    pub fn snapshot(&self) -> status::MirrorSnapshot {
        let mut s = self.status.snapshot(if self.intents_mode() {
            "lockstep"
        } else {
            "two-phase"
        });
        s.direction = self.direction.as_str();
        s.secondary = self.direction.secondary().as_str();
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

    /// The plan for a statement string, cached by its exact text (the cache is emptied
    /// when what the primary knows of its routines changes).
    pub fn plan(&self, sql: &str) -> Arc<Plan> {
        if let Some(p) = self.plans.get(sql) {
            return p.clone();
        }
        let routines = self.routines.current();
        let p = Arc::new(self.policy(plan::plan(sql, &*routines)));
        if self.plans.len() >= PLAN_CACHE_MAX {
            self.plans.clear();
        }
        self.plans.insert(sql.to_string(), p.clone());
        p
    }

    /// Forgets every cached plan (the routines they were decided with changed).
    pub fn forget_plans(&self) {
        self.plans.clear();
    }

    /// The configured policies applied to a plan.
    fn policy(&self, p: Plan) -> Plan {
        match p {
            Plan::Ddl { .. } => match self.config.ddl {
                DdlPolicy::Mirror => p,
                DdlPolicy::PrimaryOnly => Plan::Flagged {
                    reason: "DDL (ddl = primary-only)",
                },
                DdlPolicy::Reject => Plan::Rejected {
                    reason: "DDL is rejected while the database is being migrated (mirror.ddl = \"reject\")",
                },
            },
            Plan::Flagged {
                reason: "large object",
            } if self.config.strict => Plan::Rejected {
                reason: "large objects cannot be captured for the new database (mirror.strict = true)",
            },
            Plan::Multi(pieces) => Plan::Multi(
                pieces
                    .into_iter()
                    .map(|mut piece| {
                        piece.plan = self.policy(piece.plan);
                        piece
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    pub fn new_secondary(&self) -> secondary::Secondary {
        secondary::Secondary::new(
            self.secondary.clone(),
            self.direction.secondary(),
            std::time::Duration::from_millis(self.config.secondary_statement_timeout_ms),
            std::time::Duration::from_millis(self.config.secondary_lock_timeout_ms),
        )
    }

    /// Creates the retry log on the primary; a failure is reported, not fatal, because the
    /// primary may be briefly down at start (writes then fail clearly until it exists).
    pub async fn prepare_primary(&self) -> Result<(), MirrorError> {
        let c = self.control.client().await?;
        // Instances set it up at once when writes move: the lock keeps their CREATEs from
        // racing on the catalog.
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('switchyard.retry_log')); {} COMMIT",
            switchyard_core::retry::EMBEDDED_SCHEMA_SQL
        );
        let r = c.batch_execute(&sql).await;
        if r.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        r.map_err(|e| {
            MirrorError::Catalog(format!(
                "creating _switchyard.retry_log on the {} database: {}",
                self.direction.primary(),
                switchyard_core::cutover::pg_error(&e)
            ))
        })
    }
}
