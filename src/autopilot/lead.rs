//! One replica decides at a time: the pilot's own connection to a
//! PostgreSQL state holds the store's lead lock (a session-level
//! `pg_try_advisory_lock`). The holder evaluates gates and records
//! transitions, in transactions on that same connection — so a decision is
//! written only while the lock is held: if the session is gone, so is the
//! lock, and the transaction fails. The others read the state every
//! interval and apply its weights, trying for the lock each time; a
//! recorded transition wakes them at once (`LISTEN`/`NOTIFY`), so a
//! rollback reaches the fleet in milliseconds, the poll being the fallback.
//!
//! When the holder dies its connection closes, the server ends its session
//! and releases the lock, and the next replica to try takes it and goes on
//! from the stored step. Keepalives on both ends bound how long a holder cut
//! off by the network keeps the lock (and how long it believes it does).

use std::sync::Arc;
use std::time::Duration;

use strangler_store::rollouts;
use strangler_store::tokio_postgres::Client;
use strangler_store::Session;
use tokio::sync::Notify;

use super::store::{PgTarget, STATE_TIMEOUT};

/// Silence after which keepalives probe a lead session (then every half of it, three times).
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// The pilot's session with a PostgreSQL state.
pub struct Held {
    /// `autopilot.state` as written, for a config that moves the state elsewhere.
    text: String,
    pub client: Client,
    /// Whether this session holds the lead lock.
    pub leader: bool,
}

/// The pilot's session, kept between ticks.
pub struct Lead {
    held: Option<Held>,
    /// `application_name` of the session: who leads, as `rollout status` shows it.
    name: String,
    /// Woken when a transition is recorded (by any replica or command).
    wake: Arc<Notify>,
}

impl Lead {
    pub fn new(instance: &str) -> Lead {
        Lead { held: None, name: format!("strangler-pilot {instance}"), wake: Arc::new(Notify::new()) }
    }

    /// Woken when the state records a transition: the pilot reads it at once
    /// instead of at its next tick.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The session for `target`, connected if need be, having tried for the
    /// lead lock if it does not hold it. Hand it back with [`Lead::keep`]
    /// once used; a session not handed back (a call on it failed) is closed,
    /// and its lock released.
    pub async fn take(&mut self, target: &PgTarget) -> Result<Held, String> {
        let kept = self.held.take().filter(|h| h.text == target.text && !h.client.is_closed());
        tokio::time::timeout(STATE_TIMEOUT, async {
            let mut held = match kept {
                Some(held) => held,
                None => {
                    let session = Session {
                        application_name: Some(self.name.clone()),
                        keepalive: Some(KEEPALIVE),
                        wake: Some(self.wake.clone()),
                    };
                    let client = target.connect(&session).await?;
                    rollouts::listen(&client).await?;
                    Held { text: target.text.clone(), client, leader: false }
                }
            };
            if !held.leader {
                held.leader = rollouts::try_lead(&held.client).await?;
                if held.leader {
                    tracing::info!(state = %target.dsn, "this instance now decides the fleet's rollouts (lead lock taken)");
                }
            }
            Ok(held)
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STATE_TIMEOUT:?}")))
        .map_err(|e: String| format!("the rollout state {} is unavailable: {e}", target.dsn))
    }

    /// Keeps a session that served its tick for the next.
    pub fn keep(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// Whether the kept session holds the lead lock.
    pub fn leads(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.leader)
    }

    /// This pilot's name in `pg_stat_activity` (and `rollout status`).
    pub fn name(&self) -> &str {
        &self.name
    }
}
