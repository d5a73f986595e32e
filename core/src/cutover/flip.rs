//! A flip, agreed rather than broadcast: checks, a proposal every live instance confirms
//! (each has prepared for the new phase), then the commit under the next epoch. If an
//! instance does not confirm in time the proposal is withdrawn and everyone stays on the
//! epoch they run.

use super::checks::Checks;
use super::schema::{ensure_schema, CHANNEL};
use super::Phase;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Instances not seen for this long are gone (crashed or stopped without deregistering):
/// they read the state when they start again. Between the lease and this, an instance may
/// only be stalled, and a flip waits for nobody it cannot hear from.
const GONE_AFTER: Duration = Duration::from_secs(60);

/// How often the coordinator re-reads the confirmations.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct FlipRequest {
    pub to: Phase,
    /// Share of sessions reading from new in `canary` (0..=100).
    pub percent: u8,
    /// Who asked (shown in the log and the timeline).
    pub by: String,
    pub dry_run: bool,
    /// How long instances get to confirm, and then to run the new epoch.
    pub timeout: Duration,
    /// An instance not heard from for this long is not live.
    pub lease: Duration,
    /// A confirmed shadow mismatch this recent refuses a flip that moves reads to new.
    pub mismatch_window: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlipReport {
    pub from: String,
    pub to: String,
    pub percent: u8,
    pub epoch: i64,
    pub dry_run: bool,
    pub checks: Checks,
    /// From the proposal to the last confirmation.
    pub confirm_ms: u64,
    /// Every live instance runs the new epoch.
    pub converged: bool,
    pub instances: Vec<Instance>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlipError {
    #[error("cutover to {to} refused by the pre-flight checks:\n{}", checks.failures())]
    Refused { to: Phase, checks: Checks },
    #[error("cutover to {to} abandoned: {reason}; every instance stays on epoch {epoch}")]
    Abandoned {
        to: Phase,
        epoch: i64,
        reason: String,
        waiting_for: Vec<String>,
    },
    #[error("another flip is being confirmed: to {phase} (epoch {epoch}) by {by}")]
    Busy {
        phase: String,
        epoch: i64,
        by: String,
    },
    #[error("invalid cutover request: {0}")]
    Invalid(String),
    #[error("cutover control table: {}", super::pg_error(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl FlipError {
    /// The checks to show with the error, if any.
    pub fn checks(&self) -> Option<&Checks> {
        match self {
            FlipError::Refused { checks, .. } => Some(checks),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    pub phase: String,
    pub epoch: i64,
    pub ready_epoch: Option<i64>,
    pub retry_backlog: i64,
    pub last_seen_secs: f64,
    pub live: bool,
    /// Seconds since its shadow reads last confirmed a mismatch, if ever.
    pub last_mismatch_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub at: String,
    pub by: String,
    pub from: String,
    pub to: String,
    pub percent: i32,
    pub epoch: i64,
    pub outcome: String,
    pub detail: String,
    pub wait_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub phase: String,
    pub epoch: i64,
    pub percent: u8,
    pub proposed: Option<String>,
    pub changed_by: Option<String>,
    /// Every live instance runs `epoch`.
    pub converged: bool,
    pub instances: Vec<Instance>,
    /// The latest flips, newest first.
    pub history: Vec<LogEntry>,
}

struct State {
    phase: Phase,
    epoch: i64,
    percent: u8,
}

async fn state(old: &Client) -> Result<State, FlipError> {
    let row = old
        .query_one("SELECT phase, epoch, percent FROM _switchyard.cutover", &[])
        .await?;
    let phase: String = row.get(0);
    Ok(State {
        phase: phase
            .parse()
            .map_err(|e: super::UnknownPhase| FlipError::Invalid(e.to_string()))?,
        epoch: row.get(1),
        percent: row.get::<_, i32>(2).clamp(0, 100) as u8,
    })
}

async fn instances(old: &Client, lease: Duration) -> Result<Vec<Instance>, FlipError> {
    let rows = old
        .query(
            "SELECT id, phase, epoch, ready_epoch, retry_backlog,
                    extract(epoch FROM clock_timestamp() - last_seen)::float8,
                    extract(epoch FROM clock_timestamp() - last_mismatch)::float8
             FROM _switchyard.cutover_instances ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let secs: f64 = r.get(5);
            Instance {
                id: r.get(0),
                phase: r.get(1),
                epoch: r.get(2),
                ready_epoch: r.get(3),
                retry_backlog: r.get(4),
                last_seen_secs: secs,
                live: secs <= lease.as_secs_f64(),
                last_mismatch_secs: r.get(6),
            }
        })
        .collect())
}

/// The phase, the instances and the latest flips.
pub async fn status(old: &Client, lease: Duration) -> Result<Status, FlipError> {
    ensure_schema(old).await?;
    let s = state(old).await?;
    let row = old
        .query_one(
            "SELECT proposed_phase, proposed_epoch, changed_by FROM _switchyard.cutover",
            &[],
        )
        .await?;
    let proposed = row
        .get::<_, Option<String>>(0)
        .map(|p| format!("{p} (epoch {})", row.get::<_, Option<i64>>(1).unwrap_or(0)));
    let instances = instances(old, lease).await?;
    let history = old
        .query(
            "SELECT to_char(at, 'YYYY-MM-DD\"T\"HH24:MI:SS.MSOF'), by, from_phase, to_phase,
                    percent, epoch, outcome, detail, wait_ms
             FROM _switchyard.cutover_log ORDER BY at DESC LIMIT 20",
            &[],
        )
        .await?
        .iter()
        .map(|r| LogEntry {
            at: r.get(0),
            by: r.get(1),
            from: r.get(2),
            to: r.get(3),
            percent: r.get(4),
            epoch: r.get(5),
            outcome: r.get(6),
            detail: r.get(7),
            wait_ms: r.get(8),
        })
        .collect();
    Ok(Status {
        phase: s.phase.to_string(),
        epoch: s.epoch,
        percent: s.percent,
        proposed,
        changed_by: row.get(2),
        converged: instances
            .iter()
            .filter(|i| i.live)
            .all(|i| i.epoch == s.epoch),
        instances,
        history,
    })
}

/// Runs the pre-flight checks for `req` against the current state.
async fn preflight(
    old: &Client,
    new: Option<&Client>,
    req: &FlipRequest,
    from: &State,
    instances: &[Instance],
) -> Result<Checks, FlipError> {
    let mut checks = Checks::default();
    checks.push(
        "phase available",
        req.to.available(),
        if req.to.available() {
            format!("{} → {}", from.phase, req.to)
        } else {
            format!(
                "{} needs new to be the captured side (writes moved to new), which this \
                 version does not have yet",
                req.to
            )
        },
    );
    let live: Vec<&str> = instances
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.as_str())
        .collect();
    let stalled: Vec<String> = instances
        .iter()
        .filter(|i| !i.live && i.last_seen_secs < GONE_AFTER.as_secs_f64())
        .map(|i| format!("{} (not heard from for {:.0} s)", i.id, i.last_seen_secs))
        .collect();
    checks.push(
        "instances alive",
        stalled.is_empty(),
        if stalled.is_empty() {
            format!("{} live: {}", live.len(), live.join(", "))
        } else {
            format!("stalled: {}", stalled.join(", "))
        },
    );
    if req.to.any_reads_new(req.percent) {
        // A shape old and new answer differently, confirmed lately by any instance's
        // shadow reads: reads should not move until it is understood (and repaired).
        let recent: Vec<String> = instances
            .iter()
            .filter(|i| i.live)
            .filter_map(|i| {
                i.last_mismatch_secs
                    .filter(|s| *s <= req.mismatch_window.as_secs_f64())
                    .map(|s| format!("{} ({:.0} s ago)", i.id, s))
            })
            .collect();
        checks.push(
            "no recent mismatch",
            recent.is_empty(),
            if recent.is_empty() {
                format!(
                    "no confirmed shadow mismatch in the last {} s",
                    req.mismatch_window.as_secs()
                )
            } else {
                format!(
                    "shadow reads confirmed old and new differ: {} (see /api/mismatches; \
                     switchyard-reconciler verify / repair)",
                    recent.join(", ")
                )
            },
        );
        // New must hold every change before it serves a read.
        let embedded: i64 = old
            .query_one(
                "SELECT CASE WHEN to_regclass('_switchyard.retry_log') IS NULL THEN 0
                 ELSE (SELECT count(*) FROM _switchyard.retry_log) END",
                &[],
            )
            .await?
            .get(0);
        // The table is counted here rather than taken from the instances' heartbeats,
        // which count it only every few seconds.
        let backlog = embedded;
        checks.push(
            "retry backlog empty",
            backlog == 0,
            if backlog == 0 {
                "0 records".to_string()
            } else {
                format!(
                    "{backlog} records not applied on new yet (run switchyard-reconciler replay)"
                )
            },
        );
        match new {
            Some(new) => {
                let n: i64 = new
                    .query_one(
                        "SELECT count(*) FROM pg_prepared_xacts
                         WHERE gid LIKE 'switchyard:%' AND prepared < now() - interval '10 seconds'",
                        &[],
                    )
                    .await?
                    .get(0);
                checks.push(
                    "no in-doubt commits",
                    n == 0,
                    if n == 0 {
                        "no prepared transaction older than 10 s on new".to_string()
                    } else {
                        format!(
                            "{n} prepared transactions on new older than 10 s (run \
                             switchyard-reconciler recover)"
                        )
                    },
                );
            }
            None => checks.push("no in-doubt commits", false, "new database not reachable"),
        }
    }
    Ok(checks)
}

async fn log(
    old: &Client,
    req: &FlipRequest,
    from: Phase,
    epoch: i64,
    outcome: &str,
    detail: &str,
    wait: Duration,
) -> Result<(), FlipError> {
    old.execute(
        "INSERT INTO _switchyard.cutover_log
           (by, from_phase, to_phase, percent, epoch, outcome, detail, wait_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &req.by,
            &from.as_str(),
            &req.to.as_str(),
            &i32::from(req.percent),
            &epoch,
            &outcome,
            &detail,
            &(wait.as_millis() as i64),
        ],
    )
    .await?;
    Ok(())
}

/// Checks, proposes, waits for every live instance to confirm, commits, and waits for them
/// to run the new epoch. `new` is used for the checks on new (None: unreachable).
pub async fn flip(
    old: &Client,
    new: Option<&Client>,
    req: &FlipRequest,
) -> Result<FlipReport, FlipError> {
    if req.percent > 100 {
        return Err(FlipError::Invalid(format!(
            "percent must be 0 to 100, not {}",
            req.percent
        )));
    }
    if req.to != Phase::Canary && req.percent != 0 {
        return Err(FlipError::Invalid(format!(
            "percent applies to canary only, not {}",
            req.to
        )));
    }
    ensure_schema(old).await?;
    let from = state(old).await?;
    // A proposal left by a coordinator that died: withdrawn once well past its timeout.
    let busy = old
        .query_opt(
            "SELECT proposed_phase, proposed_epoch, coalesce(proposed_by, ''),
                    proposed_at > clock_timestamp() - make_interval(secs => $1)
             FROM _switchyard.cutover WHERE proposed_epoch IS NOT NULL",
            &[&(req.timeout.as_secs_f64() * 2.0 + 1.0)],
        )
        .await?;
    if let Some(row) = busy {
        if row.get::<_, bool>(3) {
            return Err(FlipError::Busy {
                phase: row.get(0),
                epoch: row.get(1),
                by: row.get(2),
            });
        }
        withdraw(old, row.get(1)).await?;
    }
    let before = instances(old, req.lease).await?;
    let checks = preflight(old, new, req, &from, &before).await?;
    let report =
        |epoch: i64, confirm: Duration, converged: bool, instances: Vec<Instance>| FlipReport {
            from: from.phase.to_string(),
            to: req.to.to_string(),
            percent: req.percent,
            epoch,
            dry_run: req.dry_run,
            checks: checks.clone(),
            confirm_ms: confirm.as_millis() as u64,
            converged,
            instances,
        };
    if !checks.passed() {
        if !req.dry_run {
            log(
                old,
                req,
                from.phase,
                from.epoch,
                "refused",
                &checks.failures(),
                Duration::ZERO,
            )
            .await?;
        }
        return Err(FlipError::Refused { to: req.to, checks });
    }
    if req.dry_run {
        let converged = before
            .iter()
            .filter(|i| i.live)
            .all(|i| i.epoch == from.epoch);
        return Ok(report(from.epoch, Duration::ZERO, converged, before));
    }
    let epoch = from.epoch + 1;
    let proposed = old
        .execute(
            "UPDATE _switchyard.cutover SET proposed_phase = $1, proposed_epoch = $2,
               proposed_percent = $3, proposed_by = $4, proposed_at = clock_timestamp()
             WHERE proposed_epoch IS NULL AND epoch = $5",
            &[
                &req.to.as_str(),
                &epoch,
                &i32::from(req.percent),
                &req.by,
                &from.epoch,
            ],
        )
        .await?;
    if proposed == 0 {
        return Err(FlipError::Busy {
            phase: "?".into(),
            epoch,
            by: "another coordinator".into(),
        });
    }
    notify(old).await?;
    let started = Instant::now();
    // Those live now must confirm; one that stops being heard from holds the flip back
    // (it may be stalled with sessions still open) until the timeout abandons it.
    let expected: Vec<String> = before
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.clone())
        .collect();
    loop {
        let now = instances(old, req.lease).await?;
        let waiting: Vec<String> = now
            .iter()
            .filter(|i| (i.live || expected.contains(&i.id)) && i.ready_epoch != Some(epoch))
            .map(|i| i.id.clone())
            .collect();
        if waiting.is_empty() {
            break;
        }
        if started.elapsed() >= req.timeout {
            withdraw(old, epoch).await?;
            let reason = format!(
                "not confirmed within {:?} by {}",
                req.timeout,
                waiting.join(", ")
            );
            log(
                old,
                req,
                from.phase,
                from.epoch,
                "abandoned",
                &reason,
                started.elapsed(),
            )
            .await?;
            return Err(FlipError::Abandoned {
                to: req.to,
                epoch: from.epoch,
                reason,
                waiting_for: waiting,
            });
        }
        tokio::time::sleep(POLL).await;
    }
    let confirm = started.elapsed();
    old.execute(
        "UPDATE _switchyard.cutover SET phase = proposed_phase, epoch = proposed_epoch,
           percent = proposed_percent, changed_by = proposed_by, changed_at = clock_timestamp(),
           proposed_phase = NULL, proposed_epoch = NULL, proposed_percent = NULL,
           proposed_by = NULL, proposed_at = NULL
         WHERE proposed_epoch = $1",
        &[&epoch],
    )
    .await?;
    notify(old).await?;
    // Every live instance confirmed it is ready: each runs the new epoch at its next poll.
    let converge_start = Instant::now();
    let (converged, now) = loop {
        let now = instances(old, req.lease).await?;
        let converged = now.iter().filter(|i| i.live).all(|i| i.epoch == epoch);
        if converged || converge_start.elapsed() >= req.timeout {
            break (converged, now);
        }
        tokio::time::sleep(POLL).await;
    };
    log(
        old,
        req,
        from.phase,
        epoch,
        "flipped",
        if converged {
            ""
        } else {
            "not every instance reported the epoch in time"
        },
        confirm,
    )
    .await?;
    Ok(report(epoch, confirm, converged, now))
}

async fn withdraw(old: &Client, epoch: i64) -> Result<(), FlipError> {
    old.execute(
        "UPDATE _switchyard.cutover SET proposed_phase = NULL, proposed_epoch = NULL,
           proposed_percent = NULL, proposed_by = NULL, proposed_at = NULL
         WHERE proposed_epoch = $1",
        &[&epoch],
    )
    .await?;
    notify(old).await
}

async fn notify(old: &Client) -> Result<(), FlipError> {
    old.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
    Ok(())
}
