//! The record writer: takes what the bounded queue holds, up to a batch at a
//! time, and inserts it in one statement that skips ids already stored (a
//! batch retried after a lost answer is not written twice). A broken
//! connection keeps the batch and reconnects with backoff; a batch the
//! database refuses is dropped and counted, so one bad row cannot stop the
//! writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, BytesMut};
use tokio::sync::mpsc;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::metrics::{StoreMetrics, STORE_REJECTED};
use crate::{connect, describe, Backoff, Row, StoreSettings};

/// Rows per insert.
const MAX_BATCH: usize = 1000;
/// A write that takes longer is taken for a dead connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

const INSERT: &str = "INSERT INTO shadow_records (id, ts, route, endpoint, instance, config_hash, result, record)
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
    ON CONFLICT (id) DO NOTHING";

/// Writes until the queue's senders are gone and what they sent is written
/// (or the store cannot be reached to write it).
pub(crate) async fn run(
    settings: Arc<StoreSettings>,
    mut queue: mpsc::Receiver<Row>,
    metrics: StoreMetrics,
    unwritten: Arc<AtomicUsize>,
) {
    let mut backoff = Backoff::new();
    let mut batch: Vec<Row> = Vec::with_capacity(MAX_BATCH);
    let mut down_since: Option<Instant> = None;
    loop {
        let client = match connect(&settings).await {
            Ok(client) => client,
            Err(e) => {
                metrics.up.set(0);
                metrics.connect_failures.inc();
                if down_since.is_none() {
                    tracing::warn!(store = %settings.dsn, error = %e, "cannot reach the shadow store; records queue up to shadow.store_queue, then are dropped and counted; retrying");
                    down_since = Some(Instant::now());
                }
                if queue.is_closed() {
                    // Shutting down and the store is away: what is left is lost.
                    return;
                }
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        metrics.up.set(1);
        backoff.reset();
        if let Some(since) = down_since.take() {
            tracing::info!(store = %settings.dsn, after = ?since.elapsed(), "shadow store reachable again; writing resumes");
        }
        match write_while_connected(&client, &mut queue, &mut batch, &metrics, &unwritten).await {
            Ok(()) => return,
            Err(e) => {
                metrics.up.set(0);
                tracing::warn!(store = %settings.dsn, error = %e, "lost the shadow store; reconnecting");
                down_since = Some(Instant::now());
            }
        }
    }
}

/// Writes batches until the queue ends (`Ok`) or the connection fails
/// (`Err`, with the unwritten batch left in `batch`).
async fn write_while_connected(
    client: &Client,
    queue: &mut mpsc::Receiver<Row>,
    batch: &mut Vec<Row>,
    metrics: &StoreMetrics,
    unwritten: &AtomicUsize,
) -> Result<(), String> {
    let insert = client.prepare(INSERT).await.map_err(|e| describe(&e))?;
    loop {
        if batch.is_empty() {
            if queue.recv_many(batch, MAX_BATCH).await == 0 {
                return Ok(());
            }
        } else {
            // A batch kept through a reconnect: topped up with what came meanwhile.
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
        }
        metrics.queued.set(queue.len() as i64);
        let started = Instant::now();
        let columns = Columns::of(batch);
        let written = tokio::time::timeout(WRITE_TIMEOUT, client.execute(&insert, &columns.params())).await;
        match written {
            Ok(Ok(_)) => {
                metrics.write_seconds.observe(started.elapsed().as_secs_f64());
                metrics.written.inc_by(batch.len() as u64);
                unwritten.fetch_sub(batch.len(), Ordering::Relaxed);
                batch.clear();
            }
            Ok(Err(e)) if refused(&e) => {
                tracing::error!(error = %describe(&e), records = batch.len(), "the shadow store refused a batch; dropped");
                metrics.dropped.with_label_values(&[STORE_REJECTED]).inc_by(batch.len() as u64);
                unwritten.fetch_sub(batch.len(), Ordering::Relaxed);
                batch.clear();
            }
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_) => return Err(format!("no answer to a write within {WRITE_TIMEOUT:?}")),
        }
    }
}

/// Whether the database refused the rows themselves (a data exception, a
/// constraint, a value too large): retrying them cannot help. Anything else
/// (a server shutting down, a lost connection) is retried on a new connection.
fn refused(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|state| matches!(state.code().get(..2), Some("22" | "23" | "54")))
}

/// A batch as one array per column, the parameters of [`INSERT`].
struct Columns<'a> {
    ids: Vec<Uuid>,
    ts: Vec<SystemTime>,
    route: Vec<&'a str>,
    endpoint: Vec<&'a str>,
    instance: Vec<&'a str>,
    config_hash: Vec<&'a str>,
    result: Vec<&'a str>,
    record: Vec<JsonText<'a>>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a [Row]) -> Columns<'a> {
        Columns {
            ids: batch.iter().map(|r| r.id).collect(),
            ts: batch.iter().map(|r| r.ts).collect(),
            route: batch.iter().map(|r| r.route.as_str()).collect(),
            endpoint: batch.iter().map(|r| r.endpoint.as_str()).collect(),
            instance: batch.iter().map(|r| r.instance.as_str()).collect(),
            config_hash: batch.iter().map(|r| r.config_hash.as_str()).collect(),
            result: batch.iter().map(|r| r.result).collect(),
            record: batch.iter().map(|r| JsonText(&r.record)).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.ids,
            &self.ts,
            &self.route,
            &self.endpoint,
            &self.instance,
            &self.config_hash,
            &self.result,
            &self.record,
        ]
    }
}

/// JSON text sent as `jsonb` as it is (no parse and re-serialize on our side).
#[derive(Debug)]
pub(crate) struct JsonText<'a>(pub(crate) &'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary form: a version byte, then the text.
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}
