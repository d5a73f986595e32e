//! The admin HTTP server: Prometheus metrics, a health probe and the status API.

use crate::backend::Db;
use crate::classify::Classifier;
use crate::counters::Counters;
use crate::cutover::api::CutoverApi;
use crate::health::Health;
use crate::history::History;
use crate::mirror::Mirror;
use crate::progress::Progress;
use crate::shadow::Shadow;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchyard_core::direction::Direction;
use tokio::sync::watch;

/// What the admin server reads; sessions' own state (users, TLS, cancel keys) is not here.
pub struct AdminContext {
    pub shutdown: watch::Receiver<bool>,
    pub counters: Arc<Counters>,
    pub max_client_connections: usize,
    pub health: Arc<Health>,
    pub classifier: Arc<Classifier>,
    /// Dual writes with old as the primary, and with new as the primary.
    pub mirror: Option<Arc<Mirror>>,
    pub mirror_back: Option<Arc<Mirror>>,
    pub progress: Arc<Progress>,
    pub history: Arc<History>,
    pub shadow: Option<Arc<Shadow>>,
    /// Also where this instance's id and the databases' URLs come from.
    pub cutover: Arc<CutoverApi>,
}

impl AdminContext {
    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn mirror_for(&self, direction: Direction) -> Option<&Arc<Mirror>> {
        match direction {
            Direction::OldToNew => self.mirror.as_ref(),
            Direction::NewToOld => self.mirror_back.as_ref(),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    admin: Arc<AdminContext>,
    metrics: Option<PrometheusHandle>,
}

pub fn router(admin: Arc<AdminContext>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .merge(crate::dashboard::routes())
        .route("/api/mismatches", get(mismatches))
        .route("/api/history", get(history))
        .route("/api/cutover", get(cutover_status).post(cutover_flip))
        .route(
            "/api/cutover/sent-back",
            axum::routing::delete(cutover_clear_sent_back),
        )
        .with_state(AdminState { admin, metrics })
}

async fn render_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    match &s.metrics {
        Some(h) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics recorder not installed: another recorder was set by the embedding program\n"
                .to_string(),
        ),
    }
}

/// 200 while accepting clients, 503 once shutting down (so load balancers drain us).
async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.admin.shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    instance_id: String,
    uptime_secs: u64,
    shutting_down: bool,
    sessions: Sessions,
    backends: Backends,
    classifier_cache_entries: usize,
    /// Dual writes; null when mirroring is off.
    mirror: Option<crate::mirror::status::MirrorSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mirror_other: Option<crate::mirror::status::MirrorSnapshot>,
    /// The cutover phase this instance runs (also in `cutover.phase`).
    phase: &'static str,
    cutover: crate::cutover::api::CutoverStatus,
    /// Backfill progress per table (from its chunk table on the new database).
    progress: Vec<crate::progress::ProgressEntry>,
    /// Shadow reads; null when off.
    shadow: Option<crate::shadow::ShadowSnapshot>,
}

#[derive(Serialize)]
struct Sessions {
    active: usize,
    total: u64,
    max: usize,
}

#[derive(Serialize)]
struct Backends {
    old: Backend,
    new: Backend,
}

#[derive(Serialize)]
struct Backend {
    /// The URL without its password.
    url: String,
    #[serde(flatten)]
    health: crate::health::BackendHealth,
}

async fn status(State(s): State<AdminState>) -> Json<Status> {
    let sh = &s.admin;
    let direction = sh.cutover.live.direction();
    let other = direction.other();
    let backend = |role: Db| Backend {
        url: match role {
            Db::Old => sh.cutover.old.to_string(),
            Db::New => sh.cutover.new.to_string(),
        },
        health: sh.health.get(role),
    };
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        instance_id: sh.cutover.instance_id.clone(),
        uptime_secs: sh.counters.started.elapsed().as_secs(),
        shutting_down: sh.shutting_down(),
        sessions: Sessions {
            active: sh.counters.sessions_active.load(Ordering::Relaxed),
            total: sh.counters.sessions_total.load(Ordering::Relaxed),
            max: sh.max_client_connections,
        },
        backends: Backends {
            old: backend(Db::Old),
            new: backend(Db::New),
        },
        classifier_cache_entries: sh.classifier.len(),
        // The dual writes sessions run now; the other direction's once it ran.
        mirror: sh.mirror_for(direction).map(|m| m.snapshot()),
        mirror_other: sh
            .mirror_for(other)
            .filter(|m| m.active())
            .map(|m| m.snapshot()),
        phase: sh.cutover.live.phase().as_str(),
        cutover: crate::cutover::api::status(&sh.cutover).await,
        progress: sh.progress.get(),
        shadow: sh.shadow.as_ref().map(|s| s.snapshot()),
    })
}

async fn cutover_status(State(s): State<AdminState>) -> impl IntoResponse {
    Json(crate::cutover::api::status(&s.admin.cutover).await)
}

/// Lets every query shape the canary sent back read from new again (once the data was
/// repaired), on this instance.
async fn cutover_clear_sent_back(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    crate::cutover::api::clear_sent_back(&s.admin.cutover, &headers)
}

async fn cutover_flip(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<crate::cutover::api::FlipBody>, axum::extract::rejection::JsonRejection>,
) -> axum::response::Response {
    match body {
        Ok(Json(body)) => crate::cutover::api::flip(&s.admin.cutover, &headers, body).await,
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The last minutes of rates and the cutover's phase changes, for the dashboard's plots.
async fn history(State(s): State<AdminState>) -> axum::response::Response {
    match s.admin.history.view() {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "history unavailable\n").into_response(),
    }
}

/// Confirmed shadow-read mismatches, newest first; 404 when shadow reads are off.
async fn mismatches(State(s): State<AdminState>) -> axum::response::Response {
    match &s.admin.shadow {
        Some(sh) => Json(sh.mismatches()).into_response(),
        None => (StatusCode::NOT_FOUND, "shadow reads are off\n").into_response(),
    }
}
