//! The live dashboard at `/` on the admin port: one page and its script and style, compiled
//! into the binary (no CDN, nothing to deploy beside it). The page polls `/api/status`,
//! `/api/mismatches`, `/api/history` and `/metrics` and draws them; `charts.js` plots the
//! history.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const CHARTS: &str = include_str!("../assets/charts.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// Routes of the page, merged into the admin router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/assets/dashboard.js", get(|| script(SCRIPT)))
        .route("/assets/charts.js", get(|| script(CHARTS)))
        .route("/assets/dashboard.css", get(style))
}

// The page shows data clients control (query texts, sample values): it is only ever set as
// text by the script, and the policy forbids inline script and other origins besides.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:";

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

async fn script(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}
