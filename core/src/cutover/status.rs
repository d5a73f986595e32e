//! What the control table says: the phase, every instance's heartbeat, the latest flips.

use super::request::FlipError;
use super::schema::ensure_schema;
use super::Phase;
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::Client;

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

pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) epoch: i64,
    pub(super) percent: u8,
}

pub(super) async fn state(old: &Client) -> Result<State, FlipError> {
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

pub(super) async fn instances(old: &Client, lease: Duration) -> Result<Vec<Instance>, FlipError> {
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
