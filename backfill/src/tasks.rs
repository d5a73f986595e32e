//! Background tasks of a running backfill: lease renewal, the control-row poller (pause,
//! rate), the adaptive brake's probe of the old database, and progress log lines.

use crate::chunk_table;
use crate::config::BackfillConfig;
use crate::connect::{connect, Db};
use crate::progress::Progress;
use crate::throttle::Throttle;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_postgres::Client;

/// Spawns the tasks; they run until the set is dropped or aborted.
pub fn spawn(
    set: &mut JoinSet<()>,
    cfg: &BackfillConfig,
    control: Arc<Client>,
    throttle: Arc<Throttle>,
    progress: Arc<Progress>,
) {
    let lease = cfg.lease();
    let c = control.clone();
    set.spawn(async move {
        // A third of the lease: two renewals may fail before anyone may take over.
        let mut tick = tokio::time::interval(lease / 3);
        loop {
            tick.tick().await;
            if let Err(e) = chunk_table::renew_leases(&c, lease).await {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "Renewing chunk leases failed.");
            }
        }
    });

    let base_rate = cfg.backfill.max_rows_per_sec;
    let t = throttle.clone();
    set.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut was_paused = false;
        loop {
            tick.tick().await;
            match chunk_table::read_control(&control).await {
                Ok(ctl) => {
                    if ctl.paused != was_paused {
                        eprintln!(
                            "switchyard-backfill: {} (control row)",
                            if ctl.paused { "paused" } else { "resumed" }
                        );
                        was_paused = ctl.paused;
                    }
                    t.set_paused(ctl.paused);
                    t.set_rate(ctl.max_rows_per_sec.map(|r| r.max(0) as u64).unwrap_or(base_rate));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "Reading the control row failed.");
                }
            }
        }
    });

    let threshold = Duration::from_millis(cfg.backfill.brake_latency_ms);
    if !threshold.is_zero() {
        let (url, probe, timeout) = (
            cfg.old.clone(),
            cfg.backfill.brake_probe.clone(),
            cfg.backfill.source_statement_timeout_ms,
        );
        let t = throttle.clone();
        set.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut client: Option<Client> = None;
            loop {
                tick.tick().await;
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = connect(Db::Old, &url, timeout).await.ok();
                }
                let Some(c) = &client else { continue };
                let started = Instant::now();
                match c.simple_query(&probe).await {
                    Ok(_) => {
                        let took = started.elapsed();
                        let before = t.brake();
                        t.observe_probe(took, threshold);
                        if before.is_zero() && !t.brake().is_zero() {
                            tracing::warn!(
                                probe_ms = took.as_millis() as u64,
                                "Old database is slow: braking."
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "The brake's probe query failed.");
                        t.observe_probe(threshold * 2, threshold);
                    }
                }
            }
        });
    }

    if !progress.has_bars() {
        let every = Duration::from_secs(cfg.backfill.progress_interval_secs.max(1));
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("switchyard-backfill: {}", progress.line());
            }
        });
    }
}
