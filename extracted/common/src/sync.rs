//! Follow the monolith's change feed (`GET /internal/events?after=&limit=`) and
//! apply events to the service's own SQLite database.
//!
//! Each batch is applied in ONE transaction together with the new cursor
//! (`sync_state.last_event_id`), so a restart resumes exactly after the last
//! committed event and no event is ever applied twice. Appliers must be
//! idempotent upserts/deletes anyway (a backfill may already contain rows
//! newer than the cursor).

use crate::db::{self, Db};
use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: i64,
    pub entity: String,
    pub entity_id: i64,
    pub op: String,
    pub payload: Value,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Feed {
    events: Vec<Event>,
    next_after: i64,
}

/// Applies one event inside the caller's transaction. Unknown entities must be ignored.
pub trait Applier: Send + Sync + 'static {
    fn apply(&self, tx: &rusqlite::Connection, ev: &Event) -> anyhow::Result<()>;
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub monolith_url: String,
    pub internal_token: Option<String>,
    pub interval: Duration,
    pub batch: u32,
    pub max_backoff: Duration,
}

impl SyncConfig {
    pub fn new(monolith_url: impl Into<String>, internal_token: Option<String>, interval: Duration) -> Self {
        SyncConfig {
            monolith_url: monolith_url.into().trim_end_matches('/').to_string(),
            internal_token,
            interval,
            batch: 500,
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Observable sync state (exposed in /healthz), and the handshake with request
/// handlers that need the replica to be fresh (`wait_fresh_round`).
#[derive(Debug, Default)]
pub struct SyncStatus {
    pub last_event_id: AtomicI64,
    pub last_success_unix: AtomicI64,
    pub consecutive_errors: AtomicU64,
    pub applied_total: AtomicU64,
    /// Rounds (fetch until drained, apply) begun so far; the n-th round is number n.
    pub rounds_started: AtomicU64,
    /// The number of the last round that completed without error.
    pub rounds_done: AtomicU64,
    /// Asks the loop to start a round now instead of at the next tick.
    pub wake: Notify,
    /// Signalled after every round, successful or not.
    pub round_ended: Notify,
}

impl SyncStatus {
    pub fn to_json(&self) -> Value {
        let last = self.last_success_unix.load(Ordering::Relaxed);
        let now = unix_now();
        serde_json::json!({
            "last_event_id": self.last_event_id.load(Ordering::Relaxed),
            "seconds_since_success": if last == 0 { Value::Null } else { Value::from(now - last) },
            "consecutive_errors": self.consecutive_errors.load(Ordering::Relaxed),
            "applied_total": self.applied_total.load(Ordering::Relaxed),
        })
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One page of the feed.
pub async fn fetch(client: &HttpClient, cfg: &SyncConfig, after: i64) -> anyhow::Result<(Vec<Event>, i64)> {
    let url = format!("{}/internal/events?after={}&limit={}", cfg.monolith_url, after, cfg.batch);
    let mut req = hyper::Request::get(&url);
    if let Some(t) = &cfg.internal_token {
        req = req.header("X-Internal-Token", t);
    }
    let req = req.body(Empty::new()).context("building request")?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| anyhow!("timeout fetching {url}"))?
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .map_err(|_| anyhow!("timeout reading {url}"))?
        .context("reading feed body")?
        .to_bytes();
    if !status.is_success() {
        return Err(anyhow!("GET {url}: status {status}: {}", String::from_utf8_lossy(&body)));
    }
    let feed: Feed = serde_json::from_slice(&body).context("decoding feed")?;
    Ok((feed.events, feed.next_after))
}

/// Apply `events` in one transaction, skipping ids <= the stored cursor.
/// Returns (applied count, new cursor).
pub fn apply_batch(db: &Db, applier: &dyn Applier, events: &[Event]) -> anyhow::Result<(usize, i64)> {
    let mut conn = db.lock().map_err(|_| anyhow!("db mutex poisoned"))?;
    let tx = conn.transaction()?;
    let mut cur = db::cursor(&tx)?;
    let mut n = 0;
    for ev in events {
        if ev.id <= cur {
            continue;
        }
        applier
            .apply(&tx, ev)
            .with_context(|| format!("applying event {} ({} {} {})", ev.id, ev.entity, ev.op, ev.entity_id))?;
        cur = ev.id;
        n += 1;
    }
    db::set_cursor(&tx, cur)?;
    tx.commit()?;
    Ok((n, cur))
}

/// Fetch and apply until the feed is drained. Returns the number of events applied.
pub async fn sync_once(
    client: &HttpClient,
    db: &Db,
    applier: &dyn Applier,
    cfg: &SyncConfig,
    status: &SyncStatus,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let after = {
            let conn = db.lock().map_err(|_| anyhow!("db mutex poisoned"))?;
            db::cursor(&conn)?
        };
        let (events, _next) = fetch(client, cfg, after).await?;
        let full = events.len() as u32 >= cfg.batch;
        let (n, cur) = if events.is_empty() { (0, after) } else { apply_batch(db, applier, &events)? };
        total += n;
        status.last_event_id.store(cur, Ordering::Relaxed);
        status.applied_total.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(applied = n, last_event_id = cur, "sync applied events");
        }
        if !full {
            status.last_success_unix.store(unix_now(), Ordering::Relaxed);
            return Ok(total);
        }
    }
}

/// The background loop: poll every `interval`; on error log and back off
/// (doubling up to `max_backoff`). Stops when `stop` becomes true.
pub async fn run_loop(
    db: Db,
    applier: Arc<dyn Applier>,
    cfg: SyncConfig,
    status: Arc<SyncStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let client = http_client();
    let mut backoff = cfg.interval;
    tracing::info!(monolith = %cfg.monolith_url, interval_ms = cfg.interval.as_millis() as u64, "sync loop started");
    loop {
        if *stop.borrow() {
            break;
        }
        let round = status.rounds_started.fetch_add(1, Ordering::SeqCst) + 1;
        let result = sync_once(&client, &db, applier.as_ref(), &cfg, &status).await;
        if result.is_ok() {
            status.rounds_done.store(round, Ordering::SeqCst);
        }
        status.round_ended.notify_waiters();
        let wait = match result {
            Ok(_) => {
                status.consecutive_errors.store(0, Ordering::Relaxed);
                backoff = cfg.interval;
                cfg.interval
            }
            Err(e) => {
                let n = status.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(error = %format!("{e:#}"), consecutive_errors = n, retry_in_ms = backoff.as_millis() as u64, "sync failed");
                let w = backoff;
                backoff = (backoff * 2).min(cfg.max_backoff).max(cfg.interval);
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
            _ = status.wake.notified() => {}
        }
    }
    tracing::info!("sync loop stopped");
}

/// Wait until a round that began after this call has applied the feed, waking
/// the loop so that it starts one at once. `true` then: whatever the monolith
/// had committed before the call is applied now. `false` after `timeout`
/// (the monolith is unreachable, or no loop runs).
/// While rounds fail the loop keeps its backoff (it is not woken).
pub async fn wait_fresh_round(status: &SyncStatus, timeout: Duration) -> bool {
    let target = status.rounds_started.load(Ordering::SeqCst) + 1;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ended = status.round_ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if status.rounds_done.load(Ordering::SeqCst) >= target {
            return true;
        }
        // While the monolith fails, the loop's backoff stands: no round per request.
        if status.consecutive_errors.load(Ordering::Relaxed) == 0 {
            status.wake.notify_one();
        }
        if tokio::time::timeout_at(deadline, ended).await.is_err() {
            return false;
        }
    }
}

/// Handle to a spawned sync loop; stops it when dropped or on `stop()`.
pub struct SyncHandle {
    tx: watch::Sender<bool>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl SyncHandle {
    pub async fn stop(mut self) {
        let _ = self.tx.send(true);
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(true);
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

pub fn spawn(db: Db, applier: Arc<dyn Applier>, cfg: SyncConfig, status: Arc<SyncStatus>) -> SyncHandle {
    let (tx, rx) = watch::channel(false);
    let join = tokio::spawn(run_loop(db, applier, cfg, status, rx));
    SyncHandle { tx, join: Some(join) }
}

/// Helpers for appliers.
pub fn payload_str(ev: &Event, key: &str) -> anyhow::Result<String> {
    ev.payload
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("event {}: payload.{key} missing or not a string", ev.id))
}

pub fn payload_i64(ev: &Event, key: &str) -> anyhow::Result<i64> {
    ev.payload
        .get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("event {}: payload.{key} missing or not an integer", ev.id))
}

/// An RFC 822 payload timestamp converted back to the stored TEXT format.
pub fn payload_ts(ev: &Event, key: &str) -> anyhow::Result<String> {
    let s = payload_str(ev, key)?;
    crate::dates::http_to_ts(&s).ok_or_else(|| anyhow!("event {}: payload.{key} is not an RFC 822 date: {s}", ev.id))
}
