//! `POST /preview` on the admin API: the body is a proposed `routes.yaml`;
//! the answer is what it would move of this proxy's recent traffic (see
//! [`crate::preview`]). Nothing is applied. `?file=NAME` names the file in
//! config errors (a bad config is a 400 with its line and column).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

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
