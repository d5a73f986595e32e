//! The proxy's work beside the sessions: the admin server, the dual writes' upkeep loops,
//! shadow comparisons, and the health, progress and history samplers. Each is handed the
//! parts it reads, taken from the admin server's context (which shows what they produce),
//! not the sessions' shared state.

use crate::admin::AdminContext;
use crate::backend::ConnectOptions;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub(crate) struct Background {
    pub admin: Arc<AdminContext>,
    /// How the health checks and the progress reader connect.
    pub connect: ConnectOptions,
    pub health_interval: Duration,
}

impl Background {
    /// Starts every task in `set`; they stop on shutdown or when `set` is aborted.
    pub(crate) fn spawn(
        self,
        set: &mut JoinSet<()>,
        admin_listener: Option<TcpListener>,
        metrics: Option<PrometheusHandle>,
    ) {
        let a = self.admin;
        if let Some(m) = metrics.clone() {
            set.spawn(crate::metrics::upkeep(
                m,
                crate::metrics::UPKEEP_INTERVAL,
                a.shutdown.clone(),
            ));
        }
        if let Some(listener) = admin_listener {
            let router = crate::admin::router(a.clone(), metrics);
            let mut stop = a.shutdown.clone();
            set.spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(
                        async move { crate::shutdown::stopped(&mut stop).await },
                    )
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "Admin server failed.");
                }
            });
        }
        let mirrors: Vec<_> = [a.mirror.clone(), a.mirror_back.clone()]
            .into_iter()
            .flatten()
            .collect();
        for m in &mirrors {
            set.spawn(crate::mirror::startup::recover_loop(
                m.clone(),
                Duration::from_secs(5),
            ));
            set.spawn(crate::mirror::intents::sweep_loop(m.clone()));
            set.spawn(crate::mirror::startup::log_loop(m.clone()));
        }
        // Every two seconds: the dashboard's backfill rate is taken between two refreshes.
        set.spawn(crate::progress::run(
            a.progress.clone(),
            a.cutover.new.clone(),
            self.connect.timeout,
            Duration::from_secs(2),
        ));
        set.spawn(crate::history::run(
            a.history.clone(),
            crate::history::Sources {
                counters: a.counters.clone(),
                cutover: a.cutover.live.clone(),
                mirrors,
                shadow: a.shadow.clone(),
                progress: a.progress.clone(),
            },
        ));
        if let Some(s) = a.shadow.clone() {
            set.spawn(s.run());
        }
        set.spawn(crate::health::run(
            a.health.clone(),
            a.cutover.old.clone(),
            a.cutover.new.clone(),
            self.connect,
            self.health_interval,
            a.shutdown.clone(),
        ));
    }
}
