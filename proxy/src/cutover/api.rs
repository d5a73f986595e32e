//! `POST /api/cutover` (move the flag, answered once every live instance runs the new
//! epoch, or 409 with the reason) and the cutover part of `/api/status`.

use super::warm;
use crate::shared::Shared;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use switchyard_core::cutover::{self, FlipError, FlipRequest, Phase};
use switchyard_core::db::Db;

// Declared here rather than in `cutover/mod.rs` (the status is its caller); the path keeps
// it beside its siblings.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlipBody {
    pub to: String,
    #[serde(default)]
    pub percent: u8,
    #[serde(default)]
    pub dry_run: bool,
    /// Who asks, for the log and the timeline.
    #[serde(default)]
    pub by: Option<String>,
    /// Refuse while new's buffer cache is colder than old's.
    #[serde(default)]
    pub require_warm: bool,
}

#[derive(Serialize)]
struct Refusal<'a> {
    error: String,
    checks: Option<&'a cutover::Checks>,
    waiting_for: &'a [String],
}

#[derive(Serialize)]
pub struct NextChecks {
    pub to: &'static str,
    pub checks: cutover::Checks,
}

/// The instance's view and, when the control table answers, every instance and the latest
/// flips.
#[derive(Serialize)]
pub struct CutoverStatus {
    #[serde(flatten)]
    pub live: super::LiveSnapshot,
    pub converged: Option<bool>,
    pub instances: Vec<cutover::Instance>,
    pub history: Vec<cutover::LogEntry>,
    pub error: Option<String>,
    /// Old's and new's buffer cache hit ratios.
    pub cache_hit_ratio: warm::WarmStatus,
    /// The next phase forward and its pre-flight checklist, as a dry run shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<NextChecks>,
    /// The checklist of `next`, where the brief's interface names it.
    pub checks: Option<cutover::Checks>,
}

pub async fn status(shared: &Shared) -> CutoverStatus {
    let live = shared.cutover.snapshot();
    let lease = shared.config.cutover.lease();
    let read = async {
        // Once done, the flag lives on new.
        let control = if shared.cutover.detached() {
            &shared.new_control
        } else {
            &shared.cutover_control
        };
        let client = control.client().await.map_err(|e| e.to_string())?;
        let status = cutover::status(&client, lease)
            .await
            .map_err(|e| e.to_string())?;
        let next = if shared.cutover.detached() {
            None
        } else {
            let new = shared.new_control.client().await.ok();
            let window = Duration::from_secs(shared.config.cutover.mismatch_window_secs);
            cutover::next_checklist(
                &client,
                new.as_deref(),
                lease,
                window,
                lockstep(shared),
                kafka_settings(shared),
            )
            .await
            .ok()
            .flatten()
            .map(|(to, checks)| NextChecks {
                to: to.as_str(),
                checks,
            })
        };
        Ok::<_, String>((status, next))
    };
    let ratios = async {
        tokio::time::timeout(Duration::from_secs(2), warm::hit_ratios(shared))
            .await
            .unwrap_or_else(|_| warm::WarmStatus {
                error: Some("the hit ratios did not come within 2 s".into()),
                ..Default::default()
            })
    };
    let (read, cache_hit_ratio) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(2), read), ratios);
    match read {
        Ok(Ok((s, next))) => CutoverStatus {
            live,
            converged: Some(s.converged),
            instances: s.instances,
            history: s.history,
            error: None,
            cache_hit_ratio,
            checks: next.as_ref().map(|n| n.checks.clone()),
            next,
        },
        Ok(Err(e)) => CutoverStatus {
            live,
            converged: None,
            instances: Vec::new(),
            history: Vec::new(),
            error: Some(e),
            cache_hit_ratio,
            next: None,
            checks: None,
        },
        Err(_) => CutoverStatus {
            live,
            converged: None,
            instances: Vec::new(),
            history: Vec::new(),
            error: Some("the control table did not answer within 2 s".into()),
            cache_hit_ratio,
            next: None,
            checks: None,
        },
    }
}

/// Dual writes without prepared transactions.
fn lockstep(shared: &Shared) -> bool {
    shared.config.mirror.mode == crate::config::MirrorMode::Lockstep
}

/// The Kafka retry log's settings when records go there (its backlog is a check).
fn kafka_settings(shared: &Shared) -> Option<switchyard_core::retry_kafka::KafkaSettings> {
    (shared.config.retry_log.backend == switchyard_core::retry_kafka::Backend::Kafka)
        .then(|| shared.config.retry_log.kafka.clone())
}

/// Whether the request carries the configured token (none configured: loopback only, which
/// the config check enforces).
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    match shared
        .config
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        None => true,
        Some(token) => headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `DELETE /api/cutover/sent-back`: forgets the shapes sent back to old on this instance.
pub fn clear_sent_back(shared: &Shared, headers: &HeaderMap) -> Response {
    if !authorized(shared, headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "clearing sent-back shapes needs `Authorization: Bearer <admin_token>`\n",
        )
            .into_response();
    }
    let n = shared.cutover.clear_sent_back(|fp| {
        shared
            .shadow
            .as_ref()
            .map_or(0, |s| s.stats.confirmed_count(fp))
    });
    tracing::info!(
        shapes = n,
        "Query shapes sent back to old may read from new again."
    );
    (StatusCode::OK, Json(serde_json::json!({ "cleared": n }))).into_response()
}

pub async fn flip(shared: &Shared, headers: &HeaderMap, body: FlipBody) -> Response {
    if !authorized(shared, headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "moving the cutover flag needs `Authorization: Bearer <admin_token>`\n",
        )
            .into_response();
    }
    let to: Phase = match body.to.parse() {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let req = FlipRequest {
        to,
        percent: body.percent,
        by: body
            .by
            .unwrap_or_else(|| format!("admin API of {}", shared.instance_id)),
        dry_run: body.dry_run,
        timeout: shared.config.cutover.flip_timeout(),
        lease: shared.config.cutover.lease(),
        mismatch_window: std::time::Duration::from_secs(shared.config.cutover.mismatch_window_secs),
        require_warm: body.require_warm,
        lockstep: lockstep(shared),
        kafka: kafka_settings(shared),
    };
    let timeout = shared.config.connect_timeout();
    let old = match crate::mirror::control::connect(
        Db::Old,
        &shared.old,
        "switchyard-cutover",
        None,
        timeout,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("cannot reach the old database's control table: {e}\n"),
            )
                .into_response()
        }
    };
    let new =
        crate::mirror::control::connect(Db::New, &shared.new, "switchyard-cutover", None, timeout)
            .await
            .ok();
    let result = cutover::flip(&old, new.as_ref(), &req).await;
    respond(&req, result)
}

/// Logs and counts a flip's outcome, and answers: 200 with the report, 409 for a flip
/// that did not happen, 400 for a bad request, 502 when the control table failed.
pub fn respond(req: &FlipRequest, result: Result<cutover::FlipReport, FlipError>) -> Response {
    let outcome = match &result {
        Ok(r) if r.dry_run => "dry_run",
        Ok(_) => "flipped",
        Err(FlipError::Refused { .. }) | Err(FlipError::Pause { .. }) => "refused",
        Err(FlipError::Abandoned { .. }) => "abandoned",
        Err(FlipError::Busy { .. }) => "busy",
        Err(FlipError::Invalid(_)) => "invalid",
        Err(FlipError::Db(_)) => "error",
    };
    metrics::counter!(crate::metrics::CUTOVER_FLIPS_TOTAL, "outcome" => outcome).increment(1);
    match result {
        Ok(report) => {
            if !report.dry_run {
                metrics::histogram!(crate::metrics::CUTOVER_FLIP_SECONDS)
                    .record(report.confirm_ms as f64 / 1000.0);
                tracing::info!(by = %req.by, from = %report.from, to = %report.to, percent = report.percent, epoch = report.epoch, confirm_ms = report.confirm_ms, converged = report.converged, "Cutover flag moved.");
            }
            (StatusCode::OK, Json(report)).into_response()
        }
        Err(e) => {
            tracing::warn!(by = %req.by, to = %req.to, error = %e, "Cutover flag not moved.");
            let status = match &e {
                FlipError::Invalid(_) => StatusCode::BAD_REQUEST,
                FlipError::Db(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::CONFLICT,
            };
            let waiting: &[String] = match &e {
                FlipError::Abandoned { waiting_for, .. } => waiting_for,
                _ => &[],
            };
            let body = Refusal {
                error: e.to_string(),
                checks: e.checks(),
                waiting_for: waiting,
            };
            (status, Json(body)).into_response()
        }
    }
}
