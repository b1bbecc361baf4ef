//! `POST /preview` on the admin API: the body is a proposed `routes.yaml`;
//! the answer is what it would move of this proxy's recent traffic (see
//! [`crate::preview`]). Nothing is applied. `?file=NAME` names the file in
//! config errors (a bad config is a 400 with its line and column).
//! `GET /preview/sample?limit=N` shows the most recent samples themselves,
//! so ops can see what the proxy keeps (and that it keeps no secrets).
//! Both read traffic back, so both need loopback or the admin token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::allowed;
use super::{bad_query, error};
use crate::config::ConfigError;
use crate::Shared;

/// A proposed config larger than this is refused (413).
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Deserialize)]
pub struct PreviewQuery {
    /// The name config errors give the file.
    file: Option<String>,
}

/// `POST /preview`.
pub async fn preview(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<PreviewQuery>, QueryRejection>,
    request: Request,
) -> Response {
    if let Some(refusal) = refused(&request) {
        return refusal;
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_query(rejection),
    };
    let file = query.file.unwrap_or_else(|| "proposed routes.yaml".into());
    let body = match axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the proposed config must be at most {MAX_BODY} bytes"),
            )
        }
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "the body must be routes.yaml text in UTF-8".into());
    };
    let done = tokio::task::spawn_blocking(move || {
        let plan = crate::table::validate(&file, &text)?;
        let (table, rollouts) = (shared.table.load_full(), shared.rollouts.load_full());
        let samples = shared.preview.snapshot();
        let clock = (shared.preview.every(), Instant::now(), crate::rollout::now_ms());
        Ok(crate::preview::compare(&table, &plan, &rollouts, &samples, clock))
    })
    .await;
    match done {
        Ok(Ok(Ok(preview))) => Json(preview).into_response(),
        Ok(Ok(Err(why))) => error(StatusCode::BAD_REQUEST, "invalid_config", why),
        Ok(Err(config)) => invalid_config(&config),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// A proposed config that does not validate: 400, with where and why.
fn invalid_config(e: &ConfigError) -> Response {
    let body = json!({
        "error": "invalid_config",
        "message": e.to_string(),
        "status": 400,
        "fault": "downstream",
        "file": e.file,
        "line": e.line,
        "column": e.column,
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// A 403 unless the peer may read traffic back (loopback, or the admin token).
fn refused(request: &Request) -> Option<Response> {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    allowed(peer, request.headers(), "previews").err().map(|why| error(StatusCode::FORBIDDEN, "forbidden", why))
}

/// The most recent samples `GET /preview/sample` shows by default.
const SAMPLE_LIMIT: usize = 100;

#[derive(Deserialize)]
pub struct SampleQuery {
    limit: Option<usize>,
}

/// `GET /preview/sample?limit=N`: the sampler's counts and its `N` most
/// recent samples, newest first, each as routing reads it.
pub async fn sample(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<SampleQuery>, QueryRejection>,
    request: Request,
) -> Response {
    if let Some(refusal) = refused(&request) {
        return refusal;
    }
    let limit = match query {
        Ok(Query(query)) => query.limit.unwrap_or(SAMPLE_LIMIT),
        Err(rejection) => return bad_query(rejection),
    };
    let sampler = &shared.preview;
    let mut samples = sampler.snapshot();
    let kept = samples.len();
    samples.sort_by_key(|s| std::cmp::Reverse(s.at));
    let now = Instant::now();
    let shown: Vec<serde_json::Value> = samples
        .iter()
        .take(limit)
        .map(|s| {
            json!({
                "method": s.method.as_str(),
                "host": s.host.as_deref(),
                "path": &*s.path,
                "sticky_key_hash": s.sticky.map(|k| format!("{:016x}", k.key)),
                "age_seconds": (now.saturating_duration_since(s.at).as_secs_f64() * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    Json(json!({
        "sample_every": sampler.every(),
        "taken": sampler.taken(),
        "skipped": sampler.skipped(),
        "kept": kept,
        "capacity": sampler.capacity(),
        "samples": shown,
    }))
    .into_response()
}
