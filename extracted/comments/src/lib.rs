//! `comments` — the comments API extracted from the legacy monolith.
//!
//! Reads: `GET /api/tasks/<id>/comments`, `GET /api/comments/<id>`.
//! Writes: `POST /api/tasks/<id>/comments`, `PATCH /api/comments/<id>`,
//! `DELETE /api/comments/<id>` — against its own SQLite database, with the
//! monolith's validation, check order, status codes and bodies.
//! Users (for token validation) and tasks (for 404 on unknown task) are kept
//! in sync from the monolith's change feed, as are comments written there.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use extracted_common::body::{json_object, req_str, DEFAULT_MAX_BODY};
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
-- Users known to the monolith (only what token validation needs).
CREATE TABLE IF NOT EXISTS users (
    id       INTEGER PRIMARY KEY,
    username TEXT NOT NULL DEFAULT ''
);
-- Tasks known to the monolith (for 404 on unknown task).
CREATE TABLE IF NOT EXISTS tasks (
    id         INTEGER PRIMARY KEY,
    project_id INTEGER
);
CREATE TABLE IF NOT EXISTS comments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    INTEGER NOT NULL,
    author_id  INTEGER NOT NULL,
    body       TEXT    NOT NULL,             -- stored exactly as sent
    created_at TEXT    NOT NULL,             -- UTC 'YYYY-MM-DD HH:MM:SS'
    updated_at TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_comments_task ON comments(task_id);";

pub const DEV_JWT_SECRET: &str = "dev-insecure-jwt-secret-do-not-use-in-production";
pub const BODY_MAX: usize = 10000;
const ALLOW_TASK_COMMENTS: &str = "OPTIONS, GET, POST, HEAD";
const ALLOW_COMMENT: &str = "OPTIONS, GET, PATCH, DELETE, HEAD";

pub struct AppState {
    pub db: Db,
    pub jwt_secret: String,
    pub max_body: usize,
    pub sync_status: Arc<SyncStatus>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(conn: Connection, jwt_secret: impl Into<String>) -> SharedState {
        Self::with_max_body(conn, jwt_secret, DEFAULT_MAX_BODY)
    }
    pub fn with_max_body(conn: Connection, jwt_secret: impl Into<String>, max_body: usize) -> SharedState {
        Arc::new(AppState {
            db: db::shared(conn),
            jwt_secret: jwt_secret.into(),
            max_body,
            sync_status: Arc::default(),
        })
    }
}

pub fn open_db(path: &FsPath) -> rusqlite::Result<Connection> {
    db::open(path, SCHEMA)
}

pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/tasks/{id}/comments", any(task_comments))
        .route("/api/comments/{id}", any(comment_item))
        .fallback(|| async { html_not_found() })
        .with_state(state)
}

pub async fn run(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    extracted_common::server::serve(listener, app(state), shutdown).await
}

pub fn spawn_sync(state: &SharedState, cfg: SyncConfig) -> SyncHandle {
    sync::spawn(state.db.clone(), Arc::new(CommentsApplier), cfg, state.sync_status.clone())
}

async fn healthz(State(st): State<SharedState>) -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok", "sync": st.sync_status.to_json()}))
}

fn lock(st: &AppState) -> Result<std::sync::MutexGuard<'_, Connection>, ApiError> {
    st.db.lock().map_err(|_| ApiError::internal())
}

fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<i64, ApiError> {
    let uid = auth::verify_bearer(headers, &st.jwt_secret)?;
    let conn = lock(st)?;
    let exists = conn.query_row("SELECT 1 FROM users WHERE id = ?1", [uid], |_| Ok(())).optional()?;
    exists.map(|_| uid).ok_or_else(|| ApiError::unauthorized("invalid token"))
}

const COLS: &str = "id, task_id, author_id, body, created_at, updated_at";

fn comment_json(r: &rusqlite::Row) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>("id")?,
        "task_id": r.get::<_, i64>("task_id")?,
        "author_id": r.get::<_, i64>("author_id")?,
        "body": r.get::<_, String>("body")?,
        "created_at": dates::ts_to_http(&r.get::<_, String>("created_at")?),
        "updated_at": dates::ts_to_http(&r.get::<_, String>("updated_at")?),
    }))
}

fn get_comment(conn: &Connection, id: i64) -> Result<Value, ApiError> {
    conn.query_row(&format!("SELECT {COLS} FROM comments WHERE id = ?1"), [id], comment_json)
        .optional()?
        .ok_or_else(|| ApiError::not_found("comment", id))
}

fn require_task(st: &AppState, task_id: i64) -> Result<(), ApiError> {
    let conn = lock(st)?;
    conn.query_row("SELECT 1 FROM tasks WHERE id = ?1", [task_id], |_| Ok(()))
        .optional()?
        .ok_or_else(|| ApiError::not_found("task", task_id))
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| e.into_response())
}

async fn task_comments(
    State(st): State<SharedState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(task_id) = parse_path_id(&id) else { return html_not_found() };
    match method {
        Method::GET | Method::HEAD => respond(list_comments(&st, task_id, &uri, &headers)),
        Method::POST => respond(create_comment(&st, task_id, &headers, body).await),
        Method::OPTIONS => respond(authenticate(&st, &headers).map(|_| options_response(ALLOW_TASK_COMMENTS))),
        _ => html_method_not_allowed(ALLOW_TASK_COMMENTS),
    }
}

fn list_comments(
    st: &AppState,
    task_id: Result<i64, ApiError>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(st, headers)?;
    let task_id = task_id?;
    require_task(st, task_id)?;
    let p = parse_page(uri.query())?;
    let conn = lock(st)?;
    let total: i64 = conn.query_row("SELECT COUNT(*) FROM comments WHERE task_id = ?1", [task_id], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM comments WHERE task_id = ?1 ORDER BY id ASC LIMIT ?2 OFFSET ?3"
    ))?;
    let items = stmt.query_map(params![task_id, p.per_page, p.offset], comment_json)?.collect::<Result<Vec<_>, _>>()?;
    Ok(json_response(StatusCode::OK, &page_json(items, &p, total)))
}

async fn read_body_field(st: &AppState, body: Body) -> Result<String, ApiError> {
    let data = json_object(body, st.max_body).await?;
    let text = req_str(&data, "body", 1, BODY_MAX, true, true)?.unwrap_or_default();
    // The monolith accepts a lone surrogate in the JSON, then fails to store it.
    if extracted_common::body::has_lone_surrogate(&text) {
        return Err(ApiError::internal());
    }
    Ok(text)
}

async fn create_comment(
    st: &AppState,
    task_id: Result<i64, ApiError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let uid = authenticate(st, headers)?;
    let task_id = task_id?;
    require_task(st, task_id)?;
    let text = read_body_field(st, body).await?;
    let mut conn = lock(st)?;
    let tx = conn.transaction()?;
    let ts = dates::now_ts();
    tx.execute(
        "INSERT INTO comments (task_id, author_id, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![task_id, uid, text, ts],
    )?;
    let out = get_comment(&tx, tx.last_insert_rowid())?;
    tx.commit()?;
    tracing::info!(comment = out["id"].as_i64(), task = task_id, author = uid, "comment created");
    Ok(json_response(StatusCode::CREATED, &out))
}

async fn comment_item(
    State(st): State<SharedState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(id) = parse_path_id(&id) else { return html_not_found() };
    match method {
        Method::GET | Method::HEAD => respond(read_comment(&st, id, &headers)),
        Method::PATCH => respond(update_comment(&st, id, &headers, body).await),
        Method::DELETE => respond(delete_comment(&st, id, &headers)),
        Method::OPTIONS => respond(authenticate(&st, &headers).map(|_| options_response(ALLOW_COMMENT))),
        _ => html_method_not_allowed(ALLOW_COMMENT),
    }
}

fn read_comment(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<Response, ApiError> {
    authenticate(st, headers)?;
    let conn = lock(st)?;
    Ok(json_response(StatusCode::OK, &get_comment(&conn, id?)?))
}

/// 401, then 404, then 403 (author only). Returns (user id, comment id).
fn owned(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<(i64, i64), ApiError> {
    let uid = authenticate(st, headers)?;
    let id = id?;
    let conn = lock(st)?;
    let c = get_comment(&conn, id)?;
    if c["author_id"].as_i64() != Some(uid) {
        return Err(ApiError::forbidden(format!("only the author can modify comment {id}")));
    }
    Ok((uid, id))
}

async fn update_comment(
    st: &AppState,
    id: Result<i64, ApiError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (uid, id) = owned(st, id, headers)?;
    let text = read_body_field(st, body).await?;
    let mut conn = lock(st)?;
    let tx = conn.transaction()?;
    let n =
        tx.execute("UPDATE comments SET body = ?1, updated_at = ?2 WHERE id = ?3", params![text, dates::now_ts(), id])?;
    if n == 0 {
        // deleted concurrently (e.g. by the sync loop) between the checks and the write
        return Err(ApiError::not_found("comment", id));
    }
    let out = get_comment(&tx, id)?;
    tx.commit()?;
    tracing::info!(comment = id, author = uid, "comment updated");
    Ok(json_response(StatusCode::OK, &out))
}

fn delete_comment(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<Response, ApiError> {
    let (uid, id) = owned(st, id, headers)?;
    let conn = lock(st)?;
    conn.execute("DELETE FROM comments WHERE id = ?1", [id])?;
    tracing::info!(comment = id, author = uid, "comment deleted");
    let mut resp = (StatusCode::NO_CONTENT, "").into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    Ok(resp)
}

/// Applies `user`, `task` and `comment` events (idempotent upserts / deletes).
pub struct CommentsApplier;

impl Applier for CommentsApplier {
    fn apply(&self, tx: &Connection, ev: &Event) -> anyhow::Result<()> {
        let op = ev.op.as_str();
        match (ev.entity.as_str(), op) {
            ("user", "create" | "update") => {
                tx.execute(
                    "INSERT INTO users (id, username) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET username = excluded.username",
                    params![ev.entity_id, sync::payload_str(ev, "username")?],
                )?;
            }
            ("user", "delete") => {
                tx.execute("DELETE FROM users WHERE id = ?1", [ev.entity_id])?;
            }
            ("task", "create" | "update") => {
                tx.execute(
                    "INSERT INTO tasks (id, project_id) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET project_id = excluded.project_id",
                    params![ev.entity_id, ev.payload.get("project_id").and_then(Value::as_i64)],
                )?;
            }
            ("task", "delete") => {
                // The monolith emits one comment delete event per comment first; this is a safety net.
                tx.execute("DELETE FROM comments WHERE task_id = ?1", [ev.entity_id])?;
                tx.execute("DELETE FROM tasks WHERE id = ?1", [ev.entity_id])?;
            }
            ("comment", "create" | "update") => {
                tx.execute(
                    "INSERT INTO comments (id, task_id, author_id, body, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(id) DO UPDATE SET task_id = excluded.task_id, author_id = excluded.author_id,
                       body = excluded.body, created_at = excluded.created_at, updated_at = excluded.updated_at",
                    params![
                        ev.entity_id,
                        sync::payload_i64(ev, "task_id")?,
                        sync::payload_i64(ev, "author_id")?,
                        sync::payload_str(ev, "body")?,
                        sync::payload_ts(ev, "created_at")?,
                        sync::payload_ts(ev, "updated_at")?,
                    ],
                )?;
            }
            ("comment", "delete") => {
                tx.execute("DELETE FROM comments WHERE id = ?1", [ev.entity_id])?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillStats {
    pub users: usize,
    pub tasks: usize,
    pub comments: usize,
    pub last_event_id: i64,
}

/// Replace users (id, username), tasks (id, project_id) and comments with the
/// monolith's (one read snapshot) and set the sync cursor to its max event id.
pub fn backfill(conn: &mut Connection, monolith_db: &FsPath) -> anyhow::Result<BackfillStats> {
    let mut mono = db::open_monolith_readonly(monolith_db)?;
    let snap = mono.transaction()?;
    let last_event_id = db::monolith_max_event_id(&snap)?;
    let users: Vec<(i64, String)> = snap
        .prepare("SELECT id, username FROM users ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let tasks: Vec<(i64, i64)> = snap
        .prepare("SELECT id, project_id FROM tasks ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let comments: Vec<(i64, i64, i64, String, String, String)> = snap
        .prepare(&format!("SELECT {COLS} FROM comments ORDER BY id"))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
        .collect::<Result<_, _>>()?;
    drop(snap);
    let tx = conn.transaction()?;
    tx.execute_batch("DELETE FROM users; DELETE FROM tasks; DELETE FROM comments;")?;
    {
        let mut s = tx.prepare("INSERT INTO users (id, username) VALUES (?1, ?2)")?;
        for u in &users {
            s.execute(params![u.0, u.1])?;
        }
        let mut s = tx.prepare("INSERT INTO tasks (id, project_id) VALUES (?1, ?2)")?;
        for t in &tasks {
            s.execute(params![t.0, t.1])?;
        }
        let mut s = tx.prepare(&format!("INSERT INTO comments ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"))?;
        for c in &comments {
            s.execute(params![c.0, c.1, c.2, c.3, c.4, c.5])?;
        }
    }
    db::set_cursor(&tx, last_event_id)?;
    tx.commit()?;
    Ok(BackfillStats { users: users.len(), tasks: tasks.len(), comments: comments.len(), last_event_id })
}
