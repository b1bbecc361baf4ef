//! `users` — the users read API extracted from the legacy monolith.
//!
//! Serves `GET /api/users` and `GET /api/users/<id>` from its own SQLite
//! database, byte-for-byte like the monolith, kept up to date from the
//! monolith's change feed (`/internal/events`).
//!
//! Read-your-writes across the feed lag: a replica that has not applied a user
//! yet does not call it unknown. A signature-valid token whose subject is above
//! the largest user id applied, or `GET /api/users/<id>` with such an id, gets
//! `421 Misdirected Request` (the proxy's `users-read` route retries it on the
//! monolith) instead of `401 invalid token` / `404`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use extracted_common::db::{self, Db};
use extracted_common::errors::{html_method_not_allowed, html_not_found, options_response};
use extracted_common::flask_json::json_response;
use extracted_common::pagination::{page_json, parse_page, parse_path_id};
use extracted_common::sync::{self, Applier, Event, SyncConfig, SyncHandle, SyncStatus};
use extracted_common::{auth, dates, ApiError};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::future::Future;
use std::path::Path as FsPath;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use extracted_common;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY,
    username   TEXT NOT NULL,
    email      TEXT NOT NULL,
    full_name  TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,   -- UTC 'YYYY-MM-DD HH:MM:SS' like the monolith
    updated_at TEXT NOT NULL
);";

/// The change feed's default poll interval (`--sync-interval`, `USERS_SYNC_INTERVAL`):
/// a registration reaches this service at most about this long after it committed.
pub const DEFAULT_SYNC_INTERVAL: &str = "500ms";

pub const DEV_JWT_SECRET: &str = "dev-insecure-jwt-secret-do-not-use-in-production";
const ALLOW: &str = "OPTIONS, GET, HEAD";

pub struct AppState {
    pub db: Db,
    pub jwt_secret: String,
    pub sync_status: Arc<SyncStatus>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(conn: Connection, jwt_secret: impl Into<String>) -> SharedState {
        Arc::new(AppState { db: db::shared(conn), jwt_secret: jwt_secret.into(), sync_status: Arc::default() })
    }
}

/// Open (creating) the service database.
pub fn open_db(path: &FsPath) -> rusqlite::Result<Connection> {
    db::open(path, SCHEMA)
}

pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/users", any(users_collection))
        .route("/api/users/{id}", any(users_item))
        .fallback(|| async { html_not_found() })
        .with_state(state)
}

/// Serve until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    extracted_common::server::serve(listener, app(state), shutdown).await
}

/// Start the change-feed follower for this service.
pub fn spawn_sync(state: &SharedState, cfg: SyncConfig) -> SyncHandle {
    sync::spawn(state.db.clone(), Arc::new(UsersApplier), cfg, state.sync_status.clone())
}

async fn healthz(State(st): State<SharedState>) -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok", "sync": st.sync_status.to_json()}))
}

/// The `epoch` of this service's 421s: users have no ownership record (the
/// monolith always owns user writes), so 0.
pub const NO_EPOCH: i64 = 0;

/// The 421 for a user this replica has not applied yet: the monolith can answer.
fn behind(uid: i64) -> ApiError {
    ApiError::misdirected(
        "legacy",
        NO_EPOCH,
        format!("the users service's replica is behind: user {uid} is not applied yet"),
    )
}

/// Not found here: `Ok` (authoritative: absent) when `uid` is not above the
/// largest user id applied, else the 421.
fn absent(conn: &Connection, uid: i64) -> Result<(), ApiError> {
    if uid > db::high_water(conn, "user", "users")? {
        Err(behind(uid))
    } else {
        Ok(())
    }
}

fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<i64, ApiError> {
    let uid = auth::verify_bearer(headers, &st.jwt_secret)?;
    let conn = st.db.lock().map_err(|_| ApiError::internal())?;
    let exists = conn.query_row("SELECT 1 FROM users WHERE id = ?1", [uid], |_| Ok(())).optional()?;
    if exists.is_none() {
        absent(&conn, uid)?;
        return Err(ApiError::unauthorized("invalid token"));
    }
    Ok(uid)
}

fn user_json(r: &rusqlite::Row) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>("id")?,
        "username": r.get::<_, String>("username")?,
        "email": r.get::<_, String>("email")?,
        "full_name": r.get::<_, String>("full_name")?,
        "created_at": dates::ts_to_http(&r.get::<_, String>("created_at")?),
        "updated_at": dates::ts_to_http(&r.get::<_, String>("updated_at")?),
    }))
}

async fn users_collection(
    State(st): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    _body: Body,
) -> Response {
    match method {
        Method::GET | Method::HEAD => list_users(&st, &uri, &headers).unwrap_or_else(|e| e.into_response()),
        Method::OPTIONS => match authenticate(&st, &headers) {
            Ok(_) => options_response(ALLOW),
            Err(e) => e.into_response(),
        },
        _ => html_method_not_allowed(ALLOW),
    }
}

fn list_users(st: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<Response, ApiError> {
    authenticate(st, headers)?;
    let p = parse_page(uri.query())?;
    let conn = st.db.lock().map_err(|_| ApiError::internal())?;
    let total: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, username, email, full_name, created_at, updated_at FROM users ORDER BY id ASC LIMIT ?1 OFFSET ?2",
    )?;
    let items = stmt.query_map(params![p.per_page, p.offset], user_json)?.collect::<Result<Vec<_>, _>>()?;
    Ok(json_response(StatusCode::OK, &page_json(items, &p, total)))
}

async fn users_item(
    State(st): State<SharedState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    _body: Body,
) -> Response {
    let Some(id) = parse_path_id(&id) else { return html_not_found() };
    match method {
        Method::GET | Method::HEAD => get_user(&st, id, &headers).unwrap_or_else(|e| e.into_response()),
        Method::OPTIONS => match authenticate(&st, &headers) {
            Ok(_) => options_response(ALLOW),
            Err(e) => e.into_response(),
        },
        _ => html_method_not_allowed(ALLOW),
    }
}

fn get_user(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<Response, ApiError> {
    authenticate(st, headers)?;
    let id = id?;
    let conn = st.db.lock().map_err(|_| ApiError::internal())?;
    let user = conn
        .query_row(
            "SELECT id, username, email, full_name, created_at, updated_at FROM users WHERE id = ?1",
            [id],
            user_json,
        )
        .optional()?;
    match user {
        Some(u) => Ok(json_response(StatusCode::OK, &u)),
        None => {
            absent(&conn, id)?;
            Err(ApiError::not_found("user", id))
        }
    }
}

/// Applies `user` events: create/update = upsert of the payload, delete = delete.
pub struct UsersApplier;

impl Applier for UsersApplier {
    fn apply(&self, tx: &Connection, ev: &Event) -> anyhow::Result<()> {
        if ev.entity != "user" {
            return Ok(());
        }
        match ev.op.as_str() {
            "create" | "update" => {
                tx.execute(
                    "INSERT INTO users (id, username, email, full_name, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(id) DO UPDATE SET username = excluded.username, email = excluded.email,
                       full_name = excluded.full_name, created_at = excluded.created_at,
                       updated_at = excluded.updated_at",
                    params![
                        ev.entity_id,
                        sync::payload_str(ev, "username")?,
                        sync::payload_str(ev, "email")?,
                        sync::payload_str(ev, "full_name")?,
                        sync::payload_ts(ev, "created_at")?,
                        sync::payload_ts(ev, "updated_at")?,
                    ],
                )?;
                db::raise_high_water(tx, "user", ev.entity_id)?;
            }
            "delete" => {
                tx.execute("DELETE FROM users WHERE id = ?1", [ev.entity_id])?;
            }
            other => tracing::warn!(event = ev.id, op = other, "ignoring unknown op"),
        }
        Ok(())
    }
}

/// Replace this database's users with the monolith's (read from its SQLite file,
/// without password hashes) and set the sync cursor to the monolith's current
/// max event id, all in one consistent snapshot / one transaction.
/// Returns (users copied, cursor).
pub fn backfill(conn: &mut Connection, monolith_db: &FsPath) -> anyhow::Result<(usize, i64)> {
    let mut mono = db::open_monolith_readonly(monolith_db)?;
    let snap = mono.transaction()?; // one read snapshot for rows + max event id
    let max_event = db::monolith_max_event_id(&snap)?;
    let rows: Vec<(i64, String, String, String, String, String)> = {
        let mut stmt =
            snap.prepare("SELECT id, username, email, full_name, created_at, updated_at FROM users ORDER BY id")?;
        let it = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
        it.collect::<Result<_, _>>()?
    };
    drop(snap);
    let tx = conn.transaction()?;
    tx.execute_batch("DELETE FROM users; DELETE FROM applied_high_water;")?;
    {
        let mut ins = tx.prepare(
            "INSERT INTO users (id, username, email, full_name, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in &rows {
            ins.execute(params![r.0, r.1, r.2, r.3, r.4, r.5])?;
        }
    }
    db::raise_high_water(&tx, "user", rows.last().map(|r| r.0).unwrap_or(0))?;
    db::set_cursor(&tx, max_event)?;
    tx.commit()?;
    Ok((rows.len(), max_event))
}
