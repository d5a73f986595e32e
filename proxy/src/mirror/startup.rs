//! What dual writes need before the first client arrives (change capture on the primary,
//! an applier's rights and prepared transactions on the secondary), and the loops that run
//! beside the sessions: in-doubt recovery, the change-log drain, the routines refresh.

use super::control::connect;
use super::Mirror;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::capture;

/// Installs capture on the primary and checks the secondary. A database that is down is not
/// fatal (the proxy must start while the new database is down, and writes fail clearly
/// while the primary is); missing rights are, because the invariant could not be kept.
pub async fn check(m: &Mirror) -> Result<(), String> {
    let (primary, secondary) = (m.direction.primary(), m.direction.secondary());
    if let Err(e) = m.prepare_primary().await {
        tracing::warn!(error = %e, %primary, "Could not create the retry log on the primary yet; writes will fail until it exists.");
    }
    match m.control.client().await {
        Ok(c) => install(m, &c).await?,
        Err(e) => {
            // Until it is installed no claimed transaction can commit (the drain is missing):
            // writes fail clearly, none is lost. The recovery loop installs it once it answers.
            tracing::warn!(error = %e, %primary, "The primary is not reachable; change capture will be installed when it is.");
        }
    }
    let timeout = Duration::from_secs(5);
    match connect(
        m.direction.secondary(),
        &m.secondary,
        "switchyard-check",
        Some(capture::WRITER_OPTIONS),
        timeout,
    )
    .await
    {
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
                        "reading max_prepared_transactions on the {secondary} database: {e}"
                    ))
                }
            };
            match m.config.mode {
                crate::config::MirrorMode::Lockstep => {
                    tracing::info!(%secondary, "Dual writes in lockstep mode: intents recorded on the primary, no prepared transactions.");
                }
                _ if n == 0 => {
                    return Err(format!(
                        "the {secondary} database has max_prepared_transactions = 0, so it cannot take two-phase commits. \
                         Choose a mode: mirror.mode = \"lockstep\" (--mirror-mode lockstep: no PREPARE; each transaction \
                         records an intent on the {primary} database, which commits first, then the {secondary} one; \
                         see docs/dual-writes.md), or set max_prepared_transactions (e.g. to max_connections) on \
                         the {secondary} database and restart it for mirror.mode = \"two-phase\", or \"off\" for passthrough"
                    ));
                }
                _ => {
                    tracing::info!(%secondary, max_prepared_transactions = n, "Dual writes in two-phase mode (mirror.mode = \"lockstep\" runs without prepared transactions).");
                }
            }
            // Instances check at once when writes move: the lock keeps their CREATEs from
            // racing on the catalog.
            let sql = format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('switchyard.applied')); {} COMMIT",
                switchyard_core::retry::APPLIED_STATEMENTS_SQL
            );
            if let Err(e) = c.batch_execute(&sql).await {
                let _ = c.batch_execute("ROLLBACK").await;
                tracing::warn!(error = %switchyard_core::cutover::pg_error(&e), %secondary, "Could not create _switchyard.applied_statements and applied_intents on the secondary.");
            }
            always_triggers(&c, secondary).await?;
        }
        Err(e) if e.to_string().contains("session_replication_role") => {
            return Err(format!(
                "{e}: the proxy applies captured changes on the {secondary} database with \
                 session_replication_role = replica (its own triggers and foreign-key actions \
                 must not fire: their effects arrive captured). The role of the --{secondary} \
                 URL needs superuser, the managed service's admin role, or on PostgreSQL 15+ \
                 `GRANT SET ON PARAMETER session_replication_role TO <role>`"
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, %secondary, "The secondary is not reachable; writes go to the retry log until it is.");
        }
    }
    Ok(())
}

/// User triggers on the secondary enabled ALWAYS fire even for the applier (that is what
/// ALWAYS means under session_replication_role = replica): their effects, which arrive
/// captured from the primary, would be made twice. Refused, naming them and the fix.
async fn always_triggers(
    c: &tokio_postgres::Client,
    side: switchyard_core::db::Db,
) -> Result<(), String> {
    let rows = c
        .query(
            "SELECT format('%s (on %s)', quote_ident(t.tgname), t.tgrelid::regclass) FROM pg_trigger t \
             WHERE t.tgenabled = 'A' AND NOT t.tgisinternal AND t.tgname NOT LIKE 'switchyard\\_capture\\_%' \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| format!("listing the {side} database's triggers: {e}"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    Err(format!(
        "the {side} database has triggers enabled ALWAYS: {}. They fire even for the changes \
         Switchyard applies there (which already carry their effects, captured on the \
         primary), so those effects would be made twice. For the migration, make them \
         ordinary triggers (`ALTER TABLE <table> ENABLE TRIGGER <trigger>`), and ENABLE \
         ALWAYS again after the cutover",
        names.join(", ")
    ))
}

/// Installs change capture on the primary and reads its routines. Missing rights are an
/// error (the invariant could not be kept); trouble reaching it is the caller's to retry.
async fn install(m: &Mirror, c: &tokio_postgres::Client) -> Result<(), String> {
    let report = capture::install::install(c)
        .await
        .map_err(|e| format!("{e:#}"))?;
    tracing::info!(
        tables = report.tables,
        upgraded = report.upgraded,
        primary = %m.direction.primary(),
        "Change capture is installed on the primary."
    );
    m.status.capture.installed.store(true, Ordering::Relaxed);
    if let Err(e) = m.routines.refresh(c).await {
        tracing::warn!(error = %e, "Could not read the primary's routines.");
    }
    Ok(())
}

/// Every few seconds, finishes prepared transactions the proxy left behind (its own crash,
/// a secondary restart), as the primary's commit status says.
pub async fn recover_loop(m: Arc<Mirror>, every: Duration) {
    let timeout = Duration::from_secs(5);
    loop {
        if m.is_detached() {
            tokio::time::sleep(every).await;
            continue;
        }
        let primary = m.control.client().await;
        if let (Ok(p), true) = (&primary, m.active()) {
            if !m.status.capture.installed.load(Ordering::Relaxed) {
                if let Err(e) = install(&m, p).await {
                    tracing::error!(error = %e, primary = %m.direction.primary(), "Change capture could not be installed on the primary; writes cannot commit until it is.");
                }
            }
            if let Ok(row) = p
                .query_one(
                    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 \
                     FROM _switchyard.retry_log WHERE NOT dead",
                    &[],
                )
                .await
            {
                let (n, age): (i64, f64) = (row.get(0), row.get(1));
                m.status.retry_backlog.store(n.max(0) as u64, Ordering::Relaxed);
                m.status.retry_oldest_secs.store(age.max(0.0) as u64, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::MIRROR_RETRY_BACKLOG).set(n as f64);
                metrics::gauge!(crate::metrics::MIRROR_RETRY_OLDEST_SECONDS).set(age);
            }
            if let Ok((n, age)) = capture::log::backlog(p).await {
                m.status
                    .capture
                    .log_backlog
                    .store(n.max(0) as u64, Ordering::Relaxed);
                m.status
                    .capture
                    .log_oldest_secs
                    .store(age.max(0.0) as u64, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::CAPTURE_LOG_BACKLOG).set(n as f64);
            }
            match m.routines.refresh(p).await {
                Ok(true) => m.forget_plans(),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "Reading the routines failed."),
            }
        }
        let secondary = connect(
            m.direction.secondary(),
            &m.secondary,
            "switchyard-recover",
            None,
            timeout,
        )
        .await;
        if let (Ok(s), true) = (&secondary, m.active()) {
            resolve_intents(&m, s, timeout).await;
        }
        if let (Ok(p), Ok(s)) = (primary, secondary) {
            match switchyard_core::recover::resolve_in_doubt_dir(
                m.direction,
                &p,
                &s,
                Duration::from_secs(2),
            )
            .await
            {
                Ok(r) => {
                    if !r.committed.is_empty() || !r.rolled_back.is_empty() {
                        tracing::info!(
                            committed = r.committed.len(),
                            rolled_back = r.rolled_back.len(),
                            secondary = %m.direction.secondary(),
                            "Resolved in-doubt prepared transactions on the secondary."
                        );
                    }
                    m.status.in_doubt.store(
                        (r.pending.len() + r.unknown.len()) as u64,
                        Ordering::Relaxed,
                    );
                }
                Err(e) => tracing::warn!(error = %e, "Resolving in-doubt transactions failed."),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Intents a crash or a failed secondary COMMIT left behind: cleared, or their orders moved
/// into the retry log (which the reconciler's replay applies). On a connection of its own:
/// moving an intent takes a transaction.
async fn resolve_intents(m: &Mirror, secondary: &tokio_postgres::Client, timeout: Duration) {
    let waiting = match m.control.client().await {
        Ok(p) => switchyard_core::intents::count(&p, None).await.unwrap_or(0),
        Err(_) => 0,
    };
    m.status
        .intents
        .store(waiting.max(0) as u64, Ordering::Relaxed);
    if waiting == 0 {
        return;
    }
    let Ok(mut p) = connect(
        m.control.db(),
        m.control.dsn(),
        "switchyard-recover",
        None,
        timeout,
    )
    .await
    else {
        return;
    };
    match switchyard_core::intents::resolve(&mut p, secondary, INTENT_MIN_AGE).await {
        Ok(r) if r.cleared + r.queued > 0 => tracing::info!(
            cleared = r.cleared,
            queued = r.queued,
            records = r.records,
            secondary = %m.direction.secondary(),
            "Resolved intents left behind: those the secondary had not committed went to the retry log."
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Resolving intents failed."),
    }
}

/// An intent is visible only once its primary committed; the secondary's transaction is
/// then running (left alone), committed or aborted: any age can be resolved. A little age
/// spares the sweeper's work.
const INTENT_MIN_AGE: Duration = Duration::from_secs(1);

/// Drains the change log into the new database: writes no proxy mirrored in lockstep reach
/// it within `mirror.log_poll_ms` (and are counted), whoever made them.
pub async fn log_loop(m: Arc<Mirror>) {
    let every = Duration::from_millis(m.config.log_poll_ms);
    let timeout = Duration::from_secs(5);
    let mut conns: Option<(
        tokio_postgres::Client,
        tokio_postgres::Client,
        switchyard_core::connect::Writer,
    )> = None;
    let mut tables = capture::log::LogTables::default();
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    loop {
        if !m.active() {
            // Detached, or the reverse direction before its first use: nothing to drain.
            conns = None;
            tokio::time::sleep(every).await;
            continue;
        }
        if conns.is_none() && m.status.capture.installed.load(Ordering::Relaxed) {
            let opened = async {
                let log_session = || {
                    connect(
                        m.control.db(),
                        m.control.dsn(),
                        "switchyard-log",
                        None,
                        timeout,
                    )
                };
                let claim = log_session().await?;
                let source = log_session().await?;
                let target = connect(
                    m.direction.secondary(),
                    &m.secondary,
                    "switchyard-log",
                    Some(capture::WRITER_OPTIONS),
                    timeout,
                )
                .await?;
                let target = switchyard_core::connect::Writer::set_up(
                    target,
                    m.direction.secondary(),
                    switchyard_core::connect::WriteMode::Replica,
                )
                .await
                .map_err(|e| super::MirrorError::Connect(format!("{e:#}")))?;
                Ok::<_, super::MirrorError>((claim, source, target))
            }
            .await;
            match opened {
                Ok(c) => conns = Some(c),
                Err(e) => note_error(&m, &mut last_error_log, &e.to_string()),
            }
        }
        let mut more = false;
        if let Some((claim, source, target)) = conns.as_mut() {
            match capture::log::drain_once(claim, source, target, &mut tables, 500).await {
                Ok(r) => {
                    if r.events > 0 {
                        let c = &m.status.capture;
                        c.log_applied.fetch_add(r.events, Ordering::Relaxed);
                        c.writes_outside_proxy
                            .fetch_add(r.outside_proxy, Ordering::Relaxed);
                        c.writes_outside_lockstep
                            .fetch_add(r.events - r.outside_proxy, Ordering::Relaxed);
                        c.lockstep_leftovers
                            .fetch_add(r.leftovers, Ordering::Relaxed);
                        metrics::counter!(crate::metrics::CAPTURE_LOG_APPLIED_TOTAL, "via" => "outside_proxy")
                            .increment(r.outside_proxy);
                        metrics::counter!(crate::metrics::CAPTURE_LOG_APPLIED_TOTAL, "via" => "proxy")
                            .increment(r.events - r.outside_proxy);
                        tracing::debug!(
                            events = r.events,
                            outside = r.outside_proxy,
                            "Applied change-log rows."
                        );
                        more = r.events >= 500;
                    }
                    if let Ok(mut e) = m.status.capture.log_error.lock() {
                        *e = None;
                    }
                }
                Err(e) => {
                    note_error(&m, &mut last_error_log, &format!("{e:#}"));
                    tables.clear();
                    conns = None;
                }
            }
        }
        if !more {
            tokio::time::sleep(every).await;
        }
    }
}

fn note_error(m: &Mirror, last: &mut Instant, e: &str) {
    if last.elapsed() > Duration::from_secs(30) {
        *last = Instant::now();
        tracing::warn!(error = %e, "Draining the change log failed; retrying.");
    }
    if let Ok(mut slot) = m.status.capture.log_error.lock() {
        *slot = Some(e.to_string());
    }
}
