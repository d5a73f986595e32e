//! A flip, agreed rather than broadcast: checks, a proposal every live instance confirms
//! (each has prepared for the new phase), then the commit under the next epoch. If an
//! instance does not confirm in time the proposal is withdrawn and everyone stays on the
//! epoch they run.

use super::checks::preflight;
use super::proposal::{commit, notify, unconfirmed, withdraw};
use super::request::withdrawn;
use super::request::{FlipError, FlipRequest};
use super::schema::ensure_schema;
use super::status::{instances, state, Instance};
use super::verdict::Checks;
use super::Phase;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How often the coordinator re-reads the confirmations.
const POLL: Duration = Duration::from_millis(5);

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
    /// Sequences set on the side that takes writes (a write flip; before and inside the
    /// pause).
    pub sequences_set: usize,
    pub instances: Vec<Instance>,
    /// Done: what removing change capture from new did (tables cleared, or why not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_removed: Option<String>,
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
    if from.phase == Phase::Done {
        if req.to != Phase::Done {
            return Err(FlipError::Invalid(
                "the cutover is done: old is detached, and the flag now lives on new".into(),
            ));
        }
        // Done again: what is left of change capture on new comes off (nothing else moves).
        let new = new.ok_or_else(|| pause_error(req.to, "the new database is not reachable"))?;
        let control = super::done::control_for_done(new).await?;
        let now = instances(control, req.lease).await?;
        return Ok(FlipReport {
            from: from.phase.to_string(),
            to: req.to.to_string(),
            percent: 0,
            epoch: from.epoch,
            dry_run: req.dry_run,
            checks: Checks::default(),
            confirm_ms: 0,
            converged: now.iter().filter(|i| i.live).all(|i| i.epoch == from.epoch),
            instances: now,
            sequences_set: 0,
            capture_removed: if req.dry_run {
                None
            } else {
                Some(super::done::remove_capture(new, req.timeout).await)
            },
        });
    }

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
            sequences_set: 0,
            capture_removed: None,
        };
    if !checks.passed() {
        if !req.dry_run {
            refused(old, req, &from, &checks.failures()).await?;
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
    let moves_writes = from.phase.direction() != req.to.direction();
    let mut sequences_set = 0;
    if moves_writes {
        let new = new.ok_or_else(|| pause_error(req.to, "the new database is not reachable"))?;
        match super::pause::before(old, new, req.to, req.timeout).await {
            Ok(moves) => sequences_set = moves.iter().filter(|m| m.moved).count(),
            Err(reason) => {
                refused(old, req, &from, &reason).await?;
                return Err(pause_error(req.to, reason));
            }
        }
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
        let still: bool = old
            .query_one(
                "SELECT coalesce(proposed_epoch = $1, false) FROM _switchyard.cutover",
                &[&epoch],
            )
            .await?
            .get(0);
        if !still {
            log_from(old, req, &from, "abandoned", "withdrawn", started.elapsed()).await?;
            return Err(withdrawn(req, from.epoch));
        }
        let now = instances(old, req.lease).await?;
        let mut waiting = unconfirmed(&now, &expected, epoch);
        if waiting.is_empty() {
            // Every instance holds for the new epoch. For a write flip the old primary takes
            // no proxied write now: this is where sequences are checked.
            if let Some(new) = new.filter(|_| moves_writes) {
                match super::pause::inside(old, new, req.to).await {
                    Ok(n) => sequences_set += n,
                    Err(reason) => {
                        abandon(old, req, &from, epoch, &reason, started.elapsed()).await?;
                        return Err(pause_error(req.to, reason));
                    }
                }
            }
            waiting = commit(old, req, &expected, epoch).await?;
            if waiting.is_empty() {
                break;
            }
        }
        if started.elapsed() >= req.timeout {
            let reason = format!(
                "not confirmed within {:?} by {}",
                req.timeout,
                waiting.join(", ")
            );
            abandon(old, req, &from, epoch, &reason, started.elapsed()).await?;
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
    notify(old).await?;
    // Done: the flag moves to new, which instances follow from now on (they look there
    // once old says done).
    let control = match new.filter(|_| req.to == Phase::Done) {
        Some(new) => {
            super::done::move_control(new, req, epoch).await?;
            new
        }
        None => old,
    };
    // Every live instance confirmed it is ready: each runs the new epoch at its next poll.
    let converge_start = Instant::now();
    let (converged, now) = loop {
        let now = instances(control, req.lease).await?;
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
    let mut r = report(epoch, confirm, converged, now);
    r.sequences_set = sequences_set;
    if let Some(new) = new.filter(|_| req.to == Phase::Done) {
        r.capture_removed = Some(super::done::remove_capture(new, req.timeout).await);
    }
    Ok(r)
}

fn pause_error(to: Phase, reason: impl Into<String>) -> FlipError {
    FlipError::Pause {
        to,
        reason: reason.into(),
    }
}

/// Logs a flip refused before anything waited.
async fn refused(
    old: &Client,
    req: &FlipRequest,
    from: &super::status::State,
    detail: &str,
) -> Result<(), FlipError> {
    log_from(old, req, from, "refused", detail, Duration::ZERO).await
}

/// Withdraws the proposal and logs the flip as abandoned.
async fn abandon(
    old: &Client,
    req: &FlipRequest,
    from: &super::status::State,
    epoch: i64,
    reason: &str,
    waited: Duration,
) -> Result<(), FlipError> {
    withdraw(old, epoch).await?;
    log_from(old, req, from, "abandoned", reason, waited).await
}

/// Logs the flip's `outcome` (refused, abandoned) against the state it started from.
async fn log_from(
    old: &Client,
    req: &FlipRequest,
    from: &super::status::State,
    outcome: &str,
    detail: &str,
    wait: Duration,
) -> Result<(), FlipError> {
    log(old, req, from.phase, from.epoch, outcome, detail, wait).await
}
