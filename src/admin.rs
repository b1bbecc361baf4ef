//! The admin listener, kept apart from client traffic (loopback by default).
//!
//! Endpoints:
//! - `GET /healthz`: the process is alive (liveness).
//! - `GET /readyz`: a config is loaded and the proxy is not draining (readiness).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /config`: the config in force as JSON, with its content hash and
//!   load time. `hash` names the file last applied (its routes and upstreams
//!   serve); settings of that file that only a restart applies (`listen`,
//!   `admin`, top-level `shadow:`, `tls:`) are shown with the values in force
//!   in `config`, and listed under `pending_restart` with the value read;
//!   `pending_hash` is then that file's hash (a restart puts it in force in
//!   full), else `null`.
//! - `GET /explain?method=GET&path=/api/users/7&host=...&user=42&header=Name:Value`:
//!   which route and upstream that request would take, and why (with split
//!   weights and health); `user` is a sticky key, put where the route's
//!   `sticky` reads it, to show which member of a split it lands on.
//!
//!   `rollouts` lists each route with a rollout: the weights the file
//!   gives (all on its `upstream`) and the effective weights its progress
//!   gives, with their source (the rollout state).
//! - `GET /rollout`, `GET /rollout/{route}/history`,
//!   `POST /rollout/{route}/{pause|resume|promote|abort}`: the autopilot
//!   (see `admin/rollout.rs`; commands need loopback or the admin token).
//!
//! Errors are JSON in the proxy's shape (`crate::error`): a bad query is a
//! 400, an unknown path a 404.
//! - `GET /upstreams`: every upstream's targets, health, ejections and in-flight counts.
//! - `GET /shadow?min_match=99.9&min_samples=1000`: the live shadow-diff summary
//!   since start (the same JSON as `strangler report --format json`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::Shared;

mod rollout;

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
        .route("/rollout", get(rollout::status))
        .route("/rollout/{route}/history", get(rollout::history))
        .route("/rollout/{route}/{command}", axum::routing::post(rollout::command))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let app = app(shared).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
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

/// An admin error, in the proxy's JSON error shape.
fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    crate::error::json_error(status, code, "downstream", message, None, None).map(axum::body::Body::new)
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no admin endpoint {}; try /healthz, /readyz, /metrics, /config, /explain, /upstreams or /shadow",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    let message = format!("{method} {} is not served; the admin endpoints answer GET", uri.path());
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message);
    response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    response
}

/// A query that does not parse (a missing `path`, a number that is not one).
fn bad_query(rejection: QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text())
}

async fn config(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let table = shared.table.load();
    let pending = shared.restart_settings.pending_in(&table);
    let mut in_force = table.raw.clone();
    shared.restart_settings.apply_to(&mut in_force);
    Json(json!({
        "file": table.file,
        "hash": table.hash,
        "loaded_at": humantime::format_rfc3339_millis(table.loaded_at).to_string(),
        "config": in_force,
        "pending_hash": (!pending.is_empty()).then_some(&table.hash),
        "pending_restart": pending,
        "rollouts": rollout::effective_weights(&table),
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

async fn shadow(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ShadowQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, Response> {
    let Query(q) = query.map_err(bad_query)?;
    let mut options = crate::summary::ViewOptions::default();
    options.min_match = q.min_match.unwrap_or(options.min_match);
    options.min_samples = q.min_samples.unwrap_or(options.min_samples);
    let summary = shared.shadow.summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Json(summary.to_json(&options)))
}

#[derive(Deserialize)]
struct ExplainQuery {
    #[serde(default = "default_method")]
    method: String,
    path: String,
    host: Option<String>,
    /// A sticky key, put where the route's `sticky` reads it.
    user: Option<String>,
    /// One more request header, `Name:Value`.
    header: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

async fn explain(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<Json<crate::explain::Explanation>, Response> {
    let Query(q) = query.map_err(bad_query)?;
    let table = shared.table.load();
    let headers: Vec<String> = q.header.into_iter().collect();
    let question = crate::explain::Question {
        method: &q.method,
        target: &q.path,
        host: q.host.as_deref(),
        headers: &headers,
        user: q.user.as_deref(),
    };
    Ok(Json(crate::explain::explain(&table, &question, crate::explain::Health::Live)))
}
