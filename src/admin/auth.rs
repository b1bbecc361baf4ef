//! Who may use the admin endpoints that change traffic or read it back
//! (rollout commands, `/preview`): a loopback peer, or one that sends the
//! admin token (`Authorization: Bearer $STRANGLER_ADMIN_TOKEN`). With no
//! token set, only loopback peers may.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap};

/// Env var holding the token that lets a non-loopback peer in.
pub const TOKEN_ENV: &str = "STRANGLER_ADMIN_TOKEN";

/// `Ok` for a loopback peer or the right bearer token; else why not, for
/// the 403's message (`what` names the endpoints, "rollout commands").
pub fn allowed(peer: Option<SocketAddr>, headers: &HeaderMap, what: &str) -> Result<(), String> {
    if peer.is_some_and(|p| p.ip().is_loopback()) {
        return Ok(());
    }
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match (token, given) {
        (Some(token), Some(given)) if constant_time_eq(token.as_bytes(), given.as_bytes()) => Ok(()),
        (None, _) => Err(format!("{what} need a loopback peer, or {TOKEN_ENV} set and sent as a bearer token")),
        _ => Err(format!("{what} need a loopback peer or the admin bearer token")),
    }
}

/// Compares without stopping at the first difference (no timing hint).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
