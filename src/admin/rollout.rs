//! `/rollout` on the admin API: the rollouts' status and audit trail, and
//! the commands (`pause`, `resume`, `promote`, `abort`), which change
//! traffic and so need a loopback peer or the admin token
//! (`Authorization: Bearer $STRANGLER_ADMIN_TOKEN`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::allowed;
use super::error;
use crate::autopilot as pilot;
use crate::rollout::machine::Command;
use crate::Shared;

/// `GET /rollout`: every rollout's step, status, gates and what comes next,
/// whether this instance decides (`leader`) and, for a PostgreSQL state,
/// which pilot does. When the state cannot be read, what this instance
/// serves (the last progress it read) with status `paused` and the reason:
/// nothing moves until the state is back.
pub async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let table = shared.table.load_full();
    let store = pilot::state_of(&table, &shared.rollout_state);
    let plans = pilot::plans(&table);
    let now = pilot::now_ms();
    let leader = shared.rollout_leader.load(Ordering::Relaxed);
    let body = match pilot::status_from(&store, &plans, now).await {
        Ok(rollouts) => json!({ "rollouts": rollouts, "leader": leader, "state": store.describe() }),
        Err(e) => json!({
            "rollouts": pilot::status_without_state(&plans, &shared.rollouts.load(), now),
            "leader": leader,
            "state": store.describe(),
            "state_error": e,
        }),
    };
    Json(body).into_response()
}

/// `GET /rollout/{route}/history`: the route's audit trail, oldest first.
pub async fn history(State(shared): State<Arc<Shared>>, Path(route): Path<String>) -> Response {
    let store = pilot::state_of(&shared.table.load(), &shared.rollout_state);
    match store.history(&route).await {
        Ok(state) => {
            let entries: Vec<_> = state.history.into_iter().filter(|t| t.route == route).collect();
            Json(json!({ "route": route, "history": entries })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", e),
    }
}

/// `POST /rollout/{route}/{command}`, with `X-Actor: NAME` naming who asks.
pub async fn command(
    State(shared): State<Arc<Shared>>,
    Path((route, command)): Path<(String, String)>,
    request: Request,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    if let Err(why) = allowed(peer, request.headers(), "rollout commands") {
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
    let (store, lead) = (pilot::state_of(&table, &shared.rollout_state), pilot::lead_of(&table));
    match pilot::command(&store, &route, plan, cmd, &actor, (pilot::now_ms(), lead)).await {
        Ok(progress) => Json(json!({
            "route": route,
            "status": progress.status,
            "step_index": progress.step,
        }))
        .into_response(),
        Err(pilot::CommandError::Refused(why)) => error(StatusCode::CONFLICT, "conflict", why),
        Err(pilot::CommandError::State(why)) => error(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", why),
    }
}

/// For `/config`: per rolling-out route, the file's weights and the ones in
/// force, and where the latter come from.
pub fn effective_weights(shared: &Shared, table: &crate::table::Table) -> Vec<serde_json::Value> {
    let source = pilot::state_of(table, &shared.rollout_state).describe();
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

/// Who asked: `X-Actor`, else the peer's address.
fn actor(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let named = headers.get("x-actor").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    match (named, peer) {
        (Some(name), _) => name.chars().take(128).collect(),
        (None, Some(peer)) => format!("admin-api@{}", peer.ip()),
        (None, None) => "admin-api".into(),
    }
}
