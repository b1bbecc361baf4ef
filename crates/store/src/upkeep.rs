//! The store's upkeep, on a connection of its own so that it never holds up
//! the writer: noise pointers this replica learns are written, and every
//! [`NOISE_EVERY`] the union of every replica's is read back (each pointer
//! handed on once); every [`RETENTION_EVERY`] one replica at a time (the one
//! that gets a try-lock) deletes rows past the retention, in batches.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::metrics::StoreMetrics;
use crate::schema::RETENTION_LOCK;
use crate::{connect, describe, Backoff, NoisePointer, StoreSettings};

/// How often the fleet's noise is read.
pub const NOISE_EVERY: Duration = Duration::from_secs(2);
/// How often retention runs (and once at each connect).
pub const RETENTION_EVERY: Duration = Duration::from_secs(300);
/// Rows deleted per statement by retention.
const DELETE_BATCH: i64 = 5000;
/// Noise pointers held while the store is away.
const MAX_PENDING_NOISE: usize = 10_000;

pub(crate) async fn run(
    settings: Arc<StoreSettings>,
    mut learned: mpsc::Receiver<NoisePointer>,
    mut on_noise: impl FnMut(Vec<NoisePointer>),
    metrics: StoreMetrics,
) {
    let mut backoff = Backoff::new();
    let mut pending: Vec<NoisePointer> = Vec::new();
    let mut known: HashSet<NoisePointer> = HashSet::new();
    loop {
        let client = match connect(&settings).await {
            Ok(client) => client,
            Err(_) => {
                // The writer reports the outage; this side only waits.
                let wait = tokio::time::sleep(backoff.next_wait());
                tokio::select! {
                    () = wait => {}
                    pointer = learned.recv() => match pointer {
                        Some(p) => hold(&mut pending, p),
                        None => return,
                    },
                }
                continue;
            }
        };
        backoff.reset();
        let mut next_retention = Instant::now();
        // `Ok` once this replica's learned-noise channel closes (shutdown).
        let outcome: Result<(), String> = async {
            loop {
                while let Ok(p) = learned.try_recv() {
                    hold(&mut pending, p);
                }
                if !pending.is_empty() {
                    write_noise(&client, &settings.instance, &pending).await?;
                    pending.clear();
                }
                let fresh: Vec<NoisePointer> =
                    read_noise(&client).await?.into_iter().filter(|p| known.insert(p.clone())).collect();
                if !fresh.is_empty() {
                    on_noise(fresh);
                }
                if Instant::now() >= next_retention {
                    let deleted = enforce_retention(&client, settings.retention).await?;
                    metrics.retention_deleted.inc_by(deleted);
                    next_retention = Instant::now() + RETENTION_EVERY;
                }
                tokio::select! {
                    () = tokio::time::sleep(NOISE_EVERY) => {}
                    pointer = learned.recv() => match pointer {
                        Some(p) => hold(&mut pending, p),
                        None => return Ok(()),
                    },
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "store upkeep lost its connection; reconnecting"),
        }
    }
}

fn hold(pending: &mut Vec<NoisePointer>, pointer: NoisePointer) {
    if pending.len() < MAX_PENDING_NOISE {
        pending.push(pointer);
    }
}

async fn write_noise(client: &Client, instance: &str, pointers: &[NoisePointer]) -> Result<(), String> {
    let routes: Vec<&str> = pointers.iter().map(|p| p.route.as_str()).collect();
    let endpoints: Vec<&str> = pointers.iter().map(|p| p.endpoint.as_str()).collect();
    let fields: Vec<&str> = pointers.iter().map(|p| p.pointer.as_str()).collect();
    client
        .execute(
            "INSERT INTO shadow_noise (route, endpoint, pointer, instance)
             SELECT r, e, p, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(r, e, p)
             ON CONFLICT DO NOTHING",
            &[&routes, &endpoints, &fields, &instance],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(())
}

/// The union of the noise every replica learned.
pub async fn read_noise(client: &Client) -> Result<Vec<NoisePointer>, String> {
    let rows = client
        .query("SELECT DISTINCT route, endpoint, pointer FROM shadow_noise", &[])
        .await
        .map_err(|e| describe(&e))?;
    Ok(rows.iter().map(|r| NoisePointer { route: r.get(0), endpoint: r.get(1), pointer: r.get(2) }).collect())
}

/// Deletes records older than `retention` if no other replica is doing it
/// now; returns how many.
pub async fn enforce_retention(client: &Client, retention: Duration) -> Result<u64, String> {
    let locked: bool =
        client.query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK]).await.map_err(|e| describe(&e))?.get(0);
    if !locked {
        return Ok(0);
    }
    let seconds = retention.as_secs_f64();
    let mut deleted = 0;
    let result = async {
        loop {
            let n = client
                .execute(
                    "DELETE FROM shadow_records WHERE id IN (
                         SELECT id FROM shadow_records
                         WHERE ts < now() - make_interval(secs => $1) LIMIT $2)",
                    &[&seconds, &DELETE_BATCH],
                )
                .await
                .map_err(|e| describe(&e))?;
            deleted += n;
            if n < DELETE_BATCH as u64 {
                return Ok::<u64, String>(deleted);
            }
        }
    }
    .await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK]).await.map_err(|e| describe(&e))?;
    if deleted > 0 {
        tracing::info!(deleted, retention = ?retention, "shadow store retention: old records deleted");
    }
    result
}
