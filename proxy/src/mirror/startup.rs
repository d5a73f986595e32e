//! What dual writes need before the first client arrives, and the background loop that
//! resolves in-doubt prepared transactions.

use super::control::connect;
use super::Mirror;
use std::sync::Arc;
use std::time::Duration;

/// Creates the retry log on the primary and checks that the secondary can prepare
/// transactions. A database that is down is not fatal (the proxy must start while the new
/// database is down, and writes fail clearly while the retry log is missing); a secondary
/// that cannot take two-phase commits is, because the invariant could not be kept.
pub async fn check(m: &Mirror) -> Result<(), String> {
    if let Err(e) = m.prepare_primary().await {
        tracing::warn!(error = %e, "Could not create the retry log on the old database yet; writes will fail until it exists.");
    }
    let timeout = Duration::from_secs(5);
    match connect(&m.new, "switchyard-check", None, timeout).await {
        Ok(c) => {
            let n: i32 = match c
                .query_one(
                    "SELECT current_setting('max_prepared_transactions')::int",
                    &[],
                )
                .await
            {
                Ok(r) => r.get(0),
                Err(e) => {
                    return Err(format!(
                        "reading max_prepared_transactions on the new database: {e}"
                    ))
                }
            };
            if n == 0 {
                return Err("the new database has max_prepared_transactions = 0, so it cannot take two-phase commits; \
                            set it (e.g. to max_connections) and restart it, or run with mirror.mode = \"off\""
                    .into());
            }
            if let Err(e) = c
                .batch_execute(switchyard_core::retry::APPLIED_STATEMENTS_SQL)
                .await
            {
                tracing::warn!(error = %e, "Could not create _switchyard.applied_statements on the new database.");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "The new database is not reachable at start; writes go to the retry log until it is.");
        }
    }
    Ok(())
}

/// Every few seconds, finishes prepared transactions the proxy left behind (its own crash,
/// a secondary restart), as the primary's commit status says.
pub async fn recover_loop(m: Arc<Mirror>, every: Duration) {
    let timeout = Duration::from_secs(5);
    loop {
        let primary = m.control.client().await;
        if let Ok(p) = &primary {
            if let Ok(row) = p
                .query_one(
                    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 \
                     FROM _switchyard.retry_log WHERE NOT dead",
                    &[],
                )
                .await
            {
                let (n, age): (i64, f64) = (row.get(0), row.get(1));
                m.status.retry_backlog.store(n.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
                m.status.retry_oldest_secs.store(age.max(0.0) as u64, std::sync::atomic::Ordering::Relaxed);
                metrics::gauge!(crate::metrics::MIRROR_RETRY_BACKLOG).set(n as f64);
                metrics::gauge!(crate::metrics::MIRROR_RETRY_OLDEST_SECONDS).set(age);
            }
        }
        let secondary = connect(&m.new, "switchyard-recover", None, timeout).await;
        if let (Ok(p), Ok(s)) = (primary, secondary) {
            match switchyard_core::recover::resolve_in_doubt(&p, &s, Duration::from_secs(2)).await {
                Ok(r) => {
                    if !r.committed.is_empty() || !r.rolled_back.is_empty() {
                        tracing::info!(
                            committed = r.committed.len(),
                            rolled_back = r.rolled_back.len(),
                            "Resolved in-doubt prepared transactions on the new database."
                        );
                    }
                    m.status.in_doubt.store(
                        (r.pending.len() + r.unknown.len()) as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                Err(e) => tracing::warn!(error = %e, "Resolving in-doubt transactions failed."),
            }
        }
        tokio::time::sleep(every).await;
    }
}
