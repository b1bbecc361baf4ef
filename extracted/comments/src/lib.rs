//! `comments` — the comments API extracted from the legacy monolith.
//!
//! Reads: `GET /api/tasks/<id>/comments`, `GET /api/comments/<id>`.
//! Writes: `POST /api/tasks/<id>/comments`, `PATCH /api/comments/<id>`,
//! `DELETE /api/comments/<id>` — with the monolith's validation, check order,
//! status codes and bodies, taken only while this service owns comments
//! (`ownership`); otherwise answered `421` naming the owner, before anything
//! else. Each write appends a comment event to this service's own change feed
//! (`/internal/events`) in its transaction, for the monolith to apply.
//! Users (for token validation), tasks (for 404 on unknown task), ownership and
//! — while the monolith owns them — comments are copied from the monolith's
//! change feed (`replica`).
//!
//! A replica behind its feed does not answer "unknown" for what it has not
//! applied yet: a read naming a user, task or comment id above the largest it
//! has applied gets `421` (the proxy asks the monolith); a write (as owner)
//! waits for one fresh feed round, then answers, or `503` with `Retry-After`.

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
use extracted_common::sync::{self, SyncConfig, SyncHandle, SyncStatus};
use extracted_common::{auth, dates, outbox, ApiError};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::future::Future;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub mod internal;
pub mod ownership;
pub mod replica;

pub use extracted_common;
pub use ownership::Ownership;
pub use replica::{backfill, BackfillStats, CommentsApplier};

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
/// How long a write (as owner) naming a user or task this replica has not
/// applied yet waits for a fresh feed round before answering 503.
pub const REPLICA_WAIT: Duration = Duration::from_secs(2);
const ALLOW_TASK_COMMENTS: &str = "OPTIONS, GET, POST, HEAD";
const ALLOW_COMMENT: &str = "OPTIONS, GET, PATCH, DELETE, HEAD";

pub struct AppState {
    pub db: Db,
    pub jwt_secret: String,
    pub max_body: usize,
    pub sync_status: Arc<SyncStatus>,
    /// Required in `X-Internal-Token` on `/internal/*` when set.
    pub internal_token: Option<String>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(conn: Connection, jwt_secret: impl Into<String>) -> SharedState {
        Self::configured(conn, jwt_secret, DEFAULT_MAX_BODY, None)
    }
    pub fn with_max_body(conn: Connection, jwt_secret: impl Into<String>, max_body: usize) -> SharedState {
        Self::configured(conn, jwt_secret, max_body, None)
    }
    /// Every setting: body limit, and the token `/internal/*` requires (`None`: open, as on the monolith).
    pub fn configured(
        conn: Connection,
        jwt_secret: impl Into<String>,
        max_body: usize,
        internal_token: Option<String>,
    ) -> SharedState {
        Arc::new(AppState {
            db: db::shared(conn),
            jwt_secret: jwt_secret.into(),
            max_body,
            sync_status: Arc::default(),
            internal_token,
        })
    }
}

/// Open (creating) the service database: API tables, sync state, the outbox and ownership.
pub fn open_db(path: &FsPath) -> rusqlite::Result<Connection> {
    let conn = db::open(path, SCHEMA)?;
    conn.execute_batch(outbox::OUTBOX_SQL)?;
    conn.execute_batch(ownership::OWNERSHIP_SQL)?;
    Ok(conn)
}

pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/tasks/{id}/comments", any(task_comments))
        .route("/api/comments/{id}", any(comment_item))
        .merge(internal::routes())
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

/// Whether this replica has a user / task: `Behind` = absent, but its id is
/// above the largest applied, so it may exist on the monolith already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Yes,
    No,
    Behind,
}

fn known(st: &AppState, entity: &'static str, table: &'static str, id: i64) -> Result<Known, ApiError> {
    let conn = lock(st)?;
    let present = conn.query_row(&format!("SELECT 1 FROM {table} WHERE id = ?1"), [id], |_| Ok(())).optional()?;
    Ok(match present {
        Some(()) => Known::Yes,
        None if id > db::high_water(&conn, entity, table)? => Known::Behind,
        None => Known::No,
    })
}

/// The 421 of a read this replica cannot answer yet: the monolith can.
fn behind(st: &AppState, what: String) -> ApiError {
    let epoch = lock(st).and_then(|c| Ok(Ownership::load(&c)?.epoch)).unwrap_or(0);
    ApiError::misdirected(
        ownership::LEGACY,
        epoch,
        format!("the comments service's replica is behind: {what} is not applied yet"),
    )
}

/// A read's check of `entity` `id`: `missing` when absent, 421 when not applied yet.
fn require_read(
    st: &AppState,
    entity: &'static str,
    table: &'static str,
    id: i64,
    missing: impl FnOnce() -> ApiError,
) -> Result<(), ApiError> {
    match known(st, entity, table, id)? {
        Known::Yes => Ok(()),
        Known::No => Err(missing()),
        Known::Behind => Err(behind(st, format!("{entity} {id}"))),
    }
}

/// A write's check (as owner): when not applied yet, wait for one fresh feed
/// round; then absent means absent (`missing`); no round in time → 503.
async fn require_write(
    st: &AppState,
    entity: &'static str,
    table: &'static str,
    id: i64,
    missing: impl FnOnce() -> ApiError,
) -> Result<(), ApiError> {
    match known(st, entity, table, id)? {
        Known::Yes => return Ok(()),
        Known::No => return Err(missing()),
        Known::Behind => {}
    }
    if !sync::wait_fresh_round(&st.sync_status, REPLICA_WAIT).await {
        return Err(ApiError::unavailable(
            format!("the comments service has not applied {entity} {id} from the monolith yet; retry shortly"),
            1,
        ));
    }
    match known(st, entity, table, id)? {
        Known::Yes => Ok(()),
        _ => Err(missing()),
    }
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid token")
}

/// A read's authentication: 401 as the monolith, or 421 for a subject not applied yet.
fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<i64, ApiError> {
    let uid = auth::verify_bearer(headers, &st.jwt_secret)?;
    require_read(st, "user", "users", uid, invalid_token)?;
    Ok(uid)
}

/// A write's authentication (as owner): a subject not applied yet is waited for.
async fn authenticate_write(st: &AppState, headers: &HeaderMap) -> Result<i64, ApiError> {
    let uid = auth::verify_bearer(headers, &st.jwt_secret)?;
    require_write(st, "user", "users", uid, invalid_token).await?;
    Ok(uid)
}

/// 421 unless this service owns comments (checked before anything else).
fn require_owner(conn: &Connection) -> Result<(), ApiError> {
    let o = Ownership::load(conn)?;
    if o.is_service() {
        Ok(())
    } else {
        Err(o.misdirected())
    }
}

fn gate_write(st: &AppState) -> Result<(), ApiError> {
    require_owner(&*lock(st)?)
}

pub(crate) const COLS: &str = "id, task_id, author_id, body, created_at, updated_at";

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

pub(crate) fn respond(r: Result<Response, ApiError>) -> Response {
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
    require_read(st, "task", "tasks", task_id, || ApiError::not_found("task", task_id))?;
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
    gate_write(st)?;
    let uid = authenticate_write(st, headers).await?;
    let task_id = task_id?;
    require_write(st, "task", "tasks", task_id, || ApiError::not_found("task", task_id)).await?;
    let text = read_body_field(st, body).await?;
    let mut conn = lock(st)?;
    let tx = conn.transaction()?;
    require_owner(&tx)?;
    let ts = dates::now_ts();
    tx.execute(
        "INSERT INTO comments (task_id, author_id, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![task_id, uid, text, ts],
    )?;
    let id = tx.last_insert_rowid();
    let out = get_comment(&tx, id)?;
    outbox::append(&tx, "comment", id, "create", &out)?;
    tx.commit()?;
    tracing::info!(comment = id, task = task_id, author = uid, "comment created");
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
        Method::DELETE => respond(delete_comment(&st, id, &headers).await),
        Method::OPTIONS => respond(authenticate(&st, &headers).map(|_| options_response(ALLOW_COMMENT))),
        _ => html_method_not_allowed(ALLOW_COMMENT),
    }
}

fn read_comment(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<Response, ApiError> {
    authenticate(st, headers)?;
    let id = id?;
    let conn = lock(st)?;
    match get_comment(&conn, id) {
        Ok(c) => Ok(json_response(StatusCode::OK, &c)),
        // As the owner this service knows every comment; otherwise one above
        // what it has applied may exist on the monolith already.
        Err(e) if !Ownership::load(&conn)?.is_service() && id > known_comment_max(&conn)? => {
            drop(conn);
            tracing::debug!(comment = id, error = %e.message, "comment not applied yet");
            Err(behind(st, format!("comment {id}")))
        }
        Err(e) => Err(e),
    }
}

/// The largest comment id this replica has applied or allocated.
fn known_comment_max(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(db::high_water(conn, "comment", "comments")?.max(ownership::comment_id_high_water(conn)?))
}

/// 401, then 404, then 403 (author only). Returns (user id, comment id).
async fn owned(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<(i64, i64), ApiError> {
    let uid = authenticate_write(st, headers).await?;
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
    gate_write(st)?;
    let (uid, id) = owned(st, id, headers).await?;
    let text = read_body_field(st, body).await?;
    let mut conn = lock(st)?;
    let tx = conn.transaction()?;
    require_owner(&tx)?;
    let n =
        tx.execute("UPDATE comments SET body = ?1, updated_at = ?2 WHERE id = ?3", params![text, dates::now_ts(), id])?;
    if n == 0 {
        // deleted concurrently (e.g. by a task delete from the feed) between the checks and the write
        return Err(ApiError::not_found("comment", id));
    }
    let out = get_comment(&tx, id)?;
    outbox::append(&tx, "comment", id, "update", &out)?;
    tx.commit()?;
    tracing::info!(comment = id, author = uid, "comment updated");
    Ok(json_response(StatusCode::OK, &out))
}

async fn delete_comment(st: &AppState, id: Result<i64, ApiError>, headers: &HeaderMap) -> Result<Response, ApiError> {
    gate_write(st)?;
    let (uid, id) = owned(st, id, headers).await?;
    let mut conn = lock(st)?;
    let tx = conn.transaction()?;
    require_owner(&tx)?;
    let task_id: Option<i64> =
        tx.query_row("SELECT task_id FROM comments WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    let Some(task_id) = task_id else { return Err(ApiError::not_found("comment", id)) };
    tx.execute("DELETE FROM comments WHERE id = ?1", [id])?;
    outbox::append(&tx, "comment", id, "delete", &json!({"id": id, "task_id": task_id}))?;
    tx.commit()?;
    tracing::info!(comment = id, author = uid, "comment deleted");
    let mut resp = (StatusCode::NO_CONTENT, "").into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    Ok(resp)
}
