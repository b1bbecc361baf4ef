//! `/rollout` on the admin API: the rollouts' status and audit trail, and
//! the commands (`pause`, `resume`, `promote`, `abort`), which change
//! traffic and so need a loopback peer or the admin token
//! (`Authorization: Bearer $STRANGLER_ADMIN_TOKEN`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error;
use crate::autopilot as pilot;
use crate::rollout::machine::Command;
use crate::Shared;

/// Env var holding the token that lets a non-loopback peer send commands.
pub const TOKEN_ENV: &str = "STRANGLER_ADMIN_TOKEN";

/// `GET /rollout`: every rollout's step, status, gates and what comes next.
/// When the state cannot be read, what this instance serves (the last
/// progress it read) with status `paused` and the reason: nothing moves
/// until the state is back.
pub async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let table = shared.table.load();
    let store = pilot::state_of(&table);
    let plans = pilot::plans(&table);
    let last_known = shared.rollouts.load_full();
    let answer = tokio::task::spawn_blocking(move || {
        let now = pilot::now_ms();
        match store.load() {
            Ok(state) => json!({ "rollouts": pilot::status(&plans, &state, now) }),
            Err(e) => json!({
                "rollouts": pilot::status_without_state(&plans, &last_known, now),
                "state_error": e,
            }),
        }
    })
    .await;
    match answer {
        Ok(body) => Json(body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// `GET /rollout/{route}/history`: the route's audit trail, oldest first.
pub async fn history(State(shared): State<Arc<Shared>>, Path(route): Path<String>) -> Response {
    let store = pilot::state_of(&shared.table.load());
    match tokio::task::spawn_blocking(move || store.load()).await {
        Ok(Ok(state)) => {
            let entries: Vec<_> = state.history.into_iter().filter(|t| t.route == route).collect();
            Json(json!({ "route": route, "history": entries })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// `POST /rollout/{route}/{command}`, with `X-Actor: NAME` naming who asks.
pub async fn command(
    State(shared): State<Arc<Shared>>,
    Path((route, command)): Path<(String, String)>,
    request: Request,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    if let Err(why) = allowed(peer, request.headers()) {
        return error(StatusCode::FORBIDDEN, "forbidden", why);
    }
    let Some(cmd) = Command::parse(&command) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no rollout command {command:?} (pause, resume, promote, abort)"),
        );
    };
    let table = shared.table.load();
    let Some((_, plan)) = pilot::plans(&table).into_iter().find(|(name, _)| **name == *route) else {
        return error(StatusCode::NOT_FOUND, "not_found", format!("route {route:?} has no rollout"));
    };
    let actor = actor(request.headers(), peer);
    let (store, lead) = (pilot::state_of(&table), pilot::lead_of(&table));
    let done = tokio::task::spawn_blocking(move || {
        pilot::command(&store, &route, &plan, cmd, &actor, (pilot::now_ms(), lead)).map(|p| (route, p))
    })
    .await;
    match done {
        Ok(Ok((route, progress))) => Json(json!({
            "route": route,
            "status": progress.status,
            "step_index": progress.step,
        }))
        .into_response(),
        Ok(Err(pilot::CommandError::Refused(why))) => error(StatusCode::CONFLICT, "conflict", why),
        Ok(Err(pilot::CommandError::State(why))) => error(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", why),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// For `/config`: per rolling-out route, the file's weights and the ones in
/// force, and where the latter come from.
pub fn effective_weights(table: &crate::table::Table) -> Vec<serde_json::Value> {
    let source = format!("rollout state {}", pilot::state_of(table).path().display());
    table
        .router
        .entries()
        .iter()
        .filter_map(|(_, route)| {
            let (plan, effective) = route.rollout.as_ref()?;
            let to = f64::from(effective.share) / 100.0;
            Some(json!({
                "route": &*route.name,
                "file": { "weights": { plan.from.as_str(): 100.0 } },
                "effective": {
                    "weights": { plan.from.as_str(): 100.0 - to, plan.to.as_str(): to },
                    "shadow": effective.shadow,
                    "source": source,
                },
            }))
        })
        .collect()
}

/// A loopback peer, or the admin token when one is set.
fn allowed(peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), String> {
    if peer.is_some_and(|p| p.ip().is_loopback()) {
        return Ok(());
    }
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match (token, given) {
        (Some(token), Some(given)) if constant_time_eq(token.as_bytes(), given.as_bytes()) => Ok(()),
        (None, _) => {
            Err(format!("rollout commands need a loopback peer, or {TOKEN_ENV} set and sent as a bearer token"))
        }
        _ => Err("rollout commands need a loopback peer or the admin bearer token".into()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who asked: `X-Actor`, else the peer's address.
fn actor(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let named = headers.get("x-actor").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    match (named, peer) {
        (Some(name), _) => name.chars().take(128).collect(),
        (None, Some(peer)) => format!("admin-api@{}", peer.ip()),
        (None, None) => "admin-api".into(),
    }
}
