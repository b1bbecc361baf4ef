//! The autopilot's state for a fleet, in the store's database: each
//! rolling-out route's progress (`rollout_progress`, one JSON document per
//! route), the audit trail of transitions (`rollout_history`) and of config
//! reloads (`config_reloads`), both appended only.
//!
//! The documents are the proxy's (its rollout state types); this module
//! keeps them and knows only the route and time each belongs to. A change
//! reads and writes in one transaction that first takes [`STATE_LOCK`]:
//! changes from every replica's pilot, `strangler rollout pause` in a shell
//! and the admin API happen one after another, each reading what the one
//! before wrote — a route not stored yet included, which a row lock
//! (`SELECT … FOR UPDATE`) could not cover.
//!
//! A change that records a transition notifies [`CHANNEL`]: replicas that
//! [`listen`] apply a rollback (or a scheduled step) at once, not at their
//! next read.
//!
//! [`try_lead`] takes [`LEAD_LOCK`] for the session: the pilot holding it
//! decides for the fleet until its session ends (its process or its
//! connection gone), when the server releases the lock for another.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio_postgres::Client;

use crate::describe;
use crate::schema::{LEAD_LOCK, STATE_LOCK};

/// The channel a change that appends a transition notifies at commit, so
/// the replicas that [`listen`] read the state at once rather than at their
/// next poll.
pub const CHANNEL: &str = "strangler_rollouts";

/// Config reloads [`load_history`] reads, newest first (older ones stay stored).
pub const RECENT_RELOADS: i64 = 1000;

/// Each stored route's progress document, by route.
pub type Progress = BTreeMap<String, Value>;

/// What a change writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Progress documents to store (new or changed), by route.
    pub upsert: Vec<(String, Value)>,
    /// Routes whose progress is dropped.
    pub delete: Vec<String>,
    /// Transitions to append: (route, epoch milliseconds, document).
    pub transitions: Vec<(String, i64, Value)>,
    /// Config reloads to append: (epoch milliseconds, document).
    pub reloads: Vec<(i64, Value)>,
}

/// Every stored route's progress.
pub async fn load_progress(client: &Client) -> Result<Progress, String> {
    let rows = client.query("SELECT route, doc FROM rollout_progress", &[]).await.map_err(|e| describe(&e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A route's transitions, oldest first, and the most recent config reloads
/// (oldest first; the caller picks those that touched the route).
pub async fn load_history(client: &Client, route: &str) -> Result<(Vec<Value>, Vec<Value>), String> {
    let transitions = client
        .query("SELECT doc FROM rollout_history WHERE route = $1 ORDER BY id", &[&route])
        .await
        .map_err(|e| describe(&e))?;
    let reloads = client
        .query(
            "SELECT doc FROM (SELECT id, doc FROM config_reloads ORDER BY id DESC LIMIT $1) recent ORDER BY id",
            &[&RECENT_RELOADS],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok((transitions.iter().map(|r| r.get(0)).collect(), reloads.iter().map(|r| r.get(0)).collect()))
}

/// Reads every route's progress and writes what `change` makes of it, in
/// one transaction under [`STATE_LOCK`]. An error from `change` writes
/// nothing; so does a lost connection (the transaction never commits).
pub async fn update<T>(
    client: &mut Client,
    change: impl FnOnce(Progress) -> Result<(T, Changes), String>,
) -> Result<T, String> {
    let tx = client.transaction().await.map_err(|e| describe(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&STATE_LOCK]).await.map_err(|e| describe(&e))?;
    let rows = tx.query("SELECT route, doc FROM rollout_progress", &[]).await.map_err(|e| describe(&e))?;
    let (out, changes) = change(rows.iter().map(|r| (r.get(0), r.get(1))).collect())?;
    write(&tx, &changes).await.map_err(|e| describe(&e))?;
    tx.commit().await.map_err(|e| describe(&e))?;
    Ok(out)
}

async fn write(tx: &tokio_postgres::Transaction<'_>, changes: &Changes) -> Result<(), tokio_postgres::Error> {
    for (route, doc) in &changes.upsert {
        tx.execute(
            "INSERT INTO rollout_progress (route, doc) VALUES ($1, $2)
             ON CONFLICT (route) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
            &[route, doc],
        )
        .await?;
    }
    if !changes.transitions.is_empty() {
        // Delivered at commit, to every session listening.
        tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    }
    if !changes.delete.is_empty() {
        tx.execute("DELETE FROM rollout_progress WHERE route = ANY($1)", &[&changes.delete]).await?;
    }
    for (route, at_ms, doc) in &changes.transitions {
        tx.execute(
            "INSERT INTO rollout_history (at, route, doc) VALUES (to_timestamp($1::bigint::double precision / 1000), $2, $3)",
            &[at_ms, route, doc],
        )
        .await?;
    }
    for (at_ms, doc) in &changes.reloads {
        tx.execute(
            "INSERT INTO config_reloads (at, doc) VALUES (to_timestamp($1::bigint::double precision / 1000), $2)",
            &[at_ms, doc],
        )
        .await?;
    }
    Ok(())
}

/// Subscribes this session to [`CHANNEL`] (see `crate::Session::wake`).
pub async fn listen(client: &Client) -> Result<(), String> {
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(|e| describe(&e))
}

/// Tries for the lead lock on this session: true when the session now
/// holds it. Call it only while not holding it (session locks stack).
pub async fn try_lead(client: &Client) -> Result<bool, String> {
    let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEAD_LOCK]).await.map_err(|e| describe(&e))?;
    Ok(row.get(0))
}

/// The `application_name` of the session holding the lead lock, if one does.
pub async fn leader(client: &Client) -> Result<Option<String>, String> {
    // A bigint advisory key shows in pg_locks as its high and low halves.
    let (high, low) = (LEAD_LOCK >> 32, LEAD_LOCK & 0xffff_ffff);
    let row = client
        .query_opt(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid::bigint = $1 AND l.objid::bigint = $2
             LIMIT 1",
            &[&high, &low],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(row.map(|r| r.get(0)))
}
