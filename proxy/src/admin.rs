//! The admin HTTP server: Prometheus metrics, a health probe and the status API.

use crate::backend::Db;
use crate::shared::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    metrics: Option<PrometheusHandle>,
}

pub fn router(shared: Arc<Shared>, metrics: Option<PrometheusHandle>) -> Router {
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
        .with_state(AdminState { shared, metrics })
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
    if s.shared.shutting_down() {
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
    let sh = &s.shared;
    let direction = sh.cutover.direction();
    let other = direction.other();
    let backend = |role: Db| Backend {
        url: sh.dsn(role).to_string(),
        health: sh.health.get(role),
    };
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        instance_id: sh.instance_id.clone(),
        uptime_secs: sh.started.elapsed().as_secs(),
        shutting_down: sh.shutting_down(),
        sessions: Sessions {
            active: sh.sessions_active.load(Ordering::Relaxed),
            total: sh.sessions_total.load(Ordering::Relaxed),
            max: sh.config.max_client_connections,
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
        phase: sh.cutover.phase().as_str(),
        cutover: crate::cutover::api::status(sh).await,
        progress: sh.progress.get(),
        shadow: sh.shadow.as_ref().map(|s| s.snapshot()),
    })
}

async fn cutover_status(State(s): State<AdminState>) -> impl IntoResponse {
    Json(crate::cutover::api::status(&s.shared).await)
}

/// Lets every query shape the canary sent back read from new again (once the data was
/// repaired), on this instance.
async fn cutover_clear_sent_back(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    crate::cutover::api::clear_sent_back(&s.shared, &headers)
}

async fn cutover_flip(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<crate::cutover::api::FlipBody>, axum::extract::rejection::JsonRejection>,
) -> axum::response::Response {
    match body {
        Ok(Json(body)) => crate::cutover::api::flip(&s.shared, &headers, body).await,
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The last minutes of rates and the cutover's phase changes, for the dashboard's plots.
async fn history(State(s): State<AdminState>) -> axum::response::Response {
    match s.shared.history.view() {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "history unavailable\n").into_response(),
    }
}

/// Confirmed shadow-read mismatches, newest first; 404 when shadow reads are off.
async fn mismatches(State(s): State<AdminState>) -> axum::response::Response {
    match &s.shared.shadow {
        Some(sh) => Json(sh.mismatches()).into_response(),
        None => (StatusCode::NOT_FOUND, "shadow reads are off\n").into_response(),
    }
}
