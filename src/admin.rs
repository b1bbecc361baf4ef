//! The admin listener, kept apart from client traffic (loopback by default).
//!
//! Endpoints:
//! - `GET /healthz`: the process is alive (liveness).
//! - `GET /readyz`: a config is loaded and the proxy is not draining (readiness).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /config`: the active config as JSON, with its content hash and load time.
//! - `GET /explain?method=GET&path=/api/users/7&host=...`: which route and
//!   upstream that request would take, and why (with split weights and health).
//! - `GET /upstreams`: every upstream's targets, health, ejections and in-flight counts.
//! - `GET /shadow?min_match=99.9&min_samples=1000`: the live shadow-diff summary
//!   since start (the same JSON as `strangler report --format json`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::Shared;

/// The admin API as a router, so tests can drive it without a socket.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/explain", get(explain))
        .route("/upstreams", get(upstreams))
        .route("/shadow", get(shadow))
        .with_state(shared)
}

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()> + Send + 'static) {
    if let Err(e) = axum::serve(listener, app(shared)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": "draining"}))).into_response()
    } else {
        Json(json!({"ready": true, "config_hash": shared.table.load().hash})).into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

async fn config(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let table = shared.table.load();
    Json(json!({
        "file": table.file,
        "hash": table.hash,
        "loaded_at": humantime::format_rfc3339_millis(table.loaded_at).to_string(),
        "config": table.raw,
    }))
}

async fn upstreams(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let table = shared.table.load();
    let reports: Vec<_> = table.upstreams.values().map(|u| u.report()).collect();
    Json(json!({ "upstreams": reports }))
}

#[derive(Deserialize)]
struct ShadowQuery {
    min_match: Option<f64>,
    min_samples: Option<u64>,
}

async fn shadow(State(shared): State<Arc<Shared>>, Query(q): Query<ShadowQuery>) -> Json<serde_json::Value> {
    let mut options = crate::summary::ViewOptions::default();
    options.min_match = q.min_match.unwrap_or(options.min_match);
    options.min_samples = q.min_samples.unwrap_or(options.min_samples);
    let summary = shared.shadow.summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(summary.to_json(&options))
}

#[derive(Deserialize)]
struct ExplainQuery {
    #[serde(default = "default_method")]
    method: String,
    path: String,
    host: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

async fn explain(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ExplainQuery>,
) -> Json<crate::explain::Explanation> {
    let table = shared.table.load();
    Json(crate::explain::explain(&table, &q.method, &q.path, q.host.as_deref()))
}
