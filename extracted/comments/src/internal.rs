//! `/internal/*` of the comments service, for the monolith and for operators,
//! behind the same `X-Internal-Token` rule as the monolith's:
//! - `GET /internal/events?after=&limit=` — this service's change feed;
//! - `GET /internal/ownership` — who owns comments, and how far each feed is applied;
//! - `POST /internal/ownership/comments` `{"owner": "legacy"}` — hand comments back.

use crate::ownership::{self, Ownership, FEATURE, LEGACY, SERVICE};
use crate::{lock, respond, SharedState};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use extracted_common::body::json_object;
use extracted_common::errors::{html_method_not_allowed, options_response};
use extracted_common::flask_json::json_response;
use extracted_common::{db, internal, outbox, ApiError};
use serde_json::{json, Value};

const ALLOW_READ: &str = "OPTIONS, GET, HEAD";
const ALLOW_CHANGE: &str = "OPTIONS, POST";

/// The internal routes, merged into the service's router.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/internal/events", any(events))
        .route("/internal/ownership", any(ownership_state))
        .route("/internal/ownership/{feature}", any(ownership_change))
}

fn check_token(st: &SharedState, headers: &HeaderMap) -> Result<(), ApiError> {
    internal::check_token(headers, st.internal_token.as_deref())
}

async fn events(State(st): State<SharedState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match method {
        Method::GET | Method::HEAD => respond(feed_page(&st, &uri, &headers)),
        Method::OPTIONS => respond(check_token(&st, &headers).map(|_| options_response(ALLOW_READ))),
        _ => html_method_not_allowed(ALLOW_READ),
    }
}

fn feed_page(st: &SharedState, uri: &Uri, headers: &HeaderMap) -> Result<Response, ApiError> {
    check_token(st, headers)?;
    let (after, limit) = outbox::page_params(uri.query())?;
    let conn = lock(st)?;
    Ok(json_response(StatusCode::OK, &outbox::page(&conn, after, limit)?))
}

async fn ownership_state(State(st): State<SharedState>, method: Method, headers: HeaderMap) -> Response {
    match method {
        Method::GET | Method::HEAD => respond(current_state(&st, &headers)),
        Method::OPTIONS => respond(check_token(&st, &headers).map(|_| options_response(ALLOW_READ))),
        _ => html_method_not_allowed(ALLOW_READ),
    }
}

/// `applied_event_id`: this service's cursor in the monolith's feed;
/// `published_event_id`: the last event of its own feed.
fn current_state(st: &SharedState, headers: &HeaderMap) -> Result<Response, ApiError> {
    check_token(st, headers)?;
    let conn = lock(st)?;
    let body = json!({
        "features": {FEATURE: Ownership::load(&conn)?.json()},
        "applied_event_id": db::cursor(&conn)?,
        "published_event_id": outbox::last_id(&conn)?,
    });
    Ok(json_response(StatusCode::OK, &body))
}

async fn ownership_change(
    State(st): State<SharedState>,
    Path(feature): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        Method::POST => respond(change_owner(&st, &feature, &headers, body).await),
        Method::OPTIONS => respond(check_token(&st, &headers).map(|_| options_response(ALLOW_CHANGE))),
        _ => html_method_not_allowed(ALLOW_CHANGE),
    }
}

async fn change_owner(st: &SharedState, feature: &str, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    check_token(st, headers)?;
    if feature != FEATURE {
        return Err(ApiError::not_found("feature", feature));
    }
    let data = json_object(body, st.max_body).await?;
    let target = match data.get("owner") {
        None => return Err(ApiError::validation("owner", "owner is required")),
        Some(Value::String(s)) if s == LEGACY || s == SERVICE => s.as_str(),
        Some(Value::String(_)) => {
            return Err(ApiError::validation("owner", format!("owner must be {LEGACY:?} or {SERVICE:?}")))
        }
        Some(_) => return Err(ApiError::validation("owner", "owner must be a string")),
    };
    let mut conn = lock(st)?;
    let now = ownership::request(&mut conn, target)?;
    Ok(json_response(StatusCode::OK, &now.event_payload()))
}
