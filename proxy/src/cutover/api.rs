//! `POST /api/cutover` (move the flag, answered once every live instance runs the new
//! epoch, or 409 with the reason) and the cutover part of `/api/status`.

use super::warm;
use crate::config::{CutoverConfig, MirrorMode, ProxyConfig};
use crate::mirror::control::Control;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::cutover::{self, FlipError, FlipRequest, Phase};
use switchyard_core::dsn::Dsn;
use switchyard_core::retry_kafka::{Backend, KafkaSettings};

/// What the cutover API reads and moves: this instance's phase, the control tables and the
/// settings a flip is checked with.
pub struct CutoverApi {
    pub live: Arc<super::Live>,
    /// Connection to old's control table (the flag lives there until the cutover is done).
    pub old_control: Arc<Control>,
    /// Connection to new, for its checks, its cache hit ratio, and the flag once done.
    pub new_control: Arc<Control>,
    pub settings: FlipSettings,
    pub instance_id: String,
    pub old: Dsn,
    pub new: Dsn,
    /// Shadow reads, whose confirmed mismatches decide which sent-back shapes stay back.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
}

/// The configuration a flip and its checks need.
pub struct FlipSettings {
    pub cutover: CutoverConfig,
    /// Dual writes without prepared transactions: the secondary need not allow them.
    pub lockstep: bool,
    /// The Kafka retry log, when records go there: its backlog counts in the checks.
    pub kafka: Option<KafkaSettings>,
    pub admin_token: Option<String>,
    pub connect_timeout: Duration,
}

impl FlipSettings {
    pub fn from_config(config: &ProxyConfig) -> Self {
        FlipSettings {
            cutover: config.cutover.clone(),
            lockstep: config.mirror.mode == MirrorMode::Lockstep,
            kafka: (config.retry_log.backend == Backend::Kafka)
                .then(|| config.retry_log.kafka.clone()),
            admin_token: config.admin_token.clone(),
            connect_timeout: config.connect_timeout(),
        }
    }
}

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

pub async fn status(api: &CutoverApi) -> CutoverStatus {
    let live = api.live.snapshot();
    let lease = api.settings.cutover.lease();
    let read = async {
        // Once done, the flag lives on new.
        let control = if api.live.detached() {
            &api.new_control
        } else {
            &api.old_control
        };
        let client = control.client().await.map_err(|e| e.to_string())?;
        let status = cutover::status(&client, lease)
            .await
            .map_err(|e| e.to_string())?;
        let next = if api.live.detached() {
            None
        } else {
            let new = api.new_control.client().await.ok();
            let window = Duration::from_secs(api.settings.cutover.mismatch_window_secs);
            cutover::next_checklist(
                &client,
                new.as_deref(),
                lease,
                window,
                api.settings.lockstep,
                api.settings.kafka.clone(),
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
        tokio::time::timeout(
            Duration::from_secs(2),
            warm::hit_ratios(&api.old_control, &api.new_control),
        )
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

/// Whether the request carries the configured token (none configured: loopback only, which
/// the config check enforces).
fn authorized(api: &CutoverApi, headers: &HeaderMap) -> bool {
    match api
        .settings
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
pub fn clear_sent_back(api: &CutoverApi, headers: &HeaderMap) -> Response {
    if !authorized(api, headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "clearing sent-back shapes needs `Authorization: Bearer <admin_token>`\n",
        )
            .into_response();
    }
    let n = api.live.clear_sent_back(|fp| {
        api.shadow
            .as_ref()
            .map_or(0, |s| s.stats.confirmed_count(fp))
    });
    tracing::info!(
        shapes = n,
        "Query shapes sent back to old may read from new again."
    );
    (StatusCode::OK, Json(serde_json::json!({ "cleared": n }))).into_response()
}

pub async fn flip(api: &CutoverApi, headers: &HeaderMap, body: FlipBody) -> Response {
    if !authorized(api, headers) {
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
            .unwrap_or_else(|| format!("admin API of {}", api.instance_id)),
        dry_run: body.dry_run,
        timeout: api.settings.cutover.flip_timeout(),
        lease: api.settings.cutover.lease(),
        mismatch_window: std::time::Duration::from_secs(api.settings.cutover.mismatch_window_secs),
        require_warm: body.require_warm,
        lockstep: api.settings.lockstep,
        kafka: api.settings.kafka.clone(),
    };
    let connect = |role, dsn| {
        crate::mirror::control::connect(
            role,
            dsn,
            "switchyard-cutover",
            None,
            api.settings.connect_timeout,
        )
    };
    let old = match connect(switchyard_core::db::Db::Old, &api.old).await {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("cannot reach the old database's control table: {e}\n"),
            )
                .into_response()
        }
    };
    let new = connect(switchyard_core::db::Db::New, &api.new).await.ok();
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
