//! Who takes comment writes — this service or the monolith — as data moved
//! through the change feeds (protocol: issue 18).
//!
//! The service learns that it owns comments only by applying the monolith's
//! `ownership` event from the feed, in the same transaction as the feed cursor,
//! so every comment write the monolith made before the handover is already
//! applied. It gives ownership back in one transaction of its own that appends
//! the `ownership` event to its own feed (the `events` outbox).

use extracted_common::outbox;
use extracted_common::sync::{self, Event};
use extracted_common::ApiError;
use rusqlite::{params, Connection};
use serde_json::{json, Value};

/// The one movable feature of this service.
pub const FEATURE: &str = "comments";
/// Owner names: the monolith, and this service.
pub const LEGACY: &str = "legacy";
pub const SERVICE: &str = "comments";

/// The ownership table, the same on both sides; initially the monolith owns
/// comments at epoch 1.
pub const OWNERSHIP_SQL: &str = "CREATE TABLE IF NOT EXISTS ownership (
    feature    TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    high_water INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT
);
INSERT OR IGNORE INTO ownership (feature, owner, epoch, high_water, updated_at)
    VALUES ('comments', 'legacy', 1, 0, strftime('%Y-%m-%d %H:%M:%S', 'now'));";

/// The current ownership of `comments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub owner: String,
    pub epoch: i64,
    /// The largest comment id on the side that handed over, when it did.
    pub high_water: i64,
}

impl Ownership {
    /// Read inside the caller's connection or transaction.
    pub fn load(conn: &Connection) -> rusqlite::Result<Ownership> {
        conn.query_row("SELECT owner, epoch, high_water FROM ownership WHERE feature = ?1", [FEATURE], |r| {
            Ok(Ownership { owner: r.get(0)?, epoch: r.get(1)?, high_water: r.get(2)? })
        })
    }

    /// Does this service take comment writes?
    pub fn is_service(&self) -> bool {
        self.owner == SERVICE
    }

    /// `{"owner", "epoch", "high_water"}` as in `GET /internal/ownership`.
    pub fn json(&self) -> Value {
        json!({"owner": self.owner, "epoch": self.epoch, "high_water": self.high_water})
    }

    /// `{"feature", "owner", "epoch", "high_water"}`: the answer to a change
    /// request, and the payload of an `ownership` event.
    pub fn event_payload(&self) -> Value {
        json!({"feature": FEATURE, "owner": self.owner, "epoch": self.epoch, "high_water": self.high_water})
    }

    /// The 421 for a comment write this service does not own.
    pub fn misdirected(&self) -> ApiError {
        ApiError::misdirected(
            &self.owner,
            self.epoch,
            format!("comments are owned by {} (epoch {})", self.owner, self.epoch),
        )
    }

    fn store(&self, tx: &Connection) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE ownership SET owner = ?1, epoch = ?2, high_water = ?3,
               updated_at = strftime('%Y-%m-%d %H:%M:%S', 'now') WHERE feature = ?4",
            params![self.owner, self.epoch, self.high_water, FEATURE],
        )?;
        Ok(())
    }
}

/// The largest comment id that exists or ever existed here (the table's
/// largest id and its AUTOINCREMENT sequence).
pub fn comment_id_high_water(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(id) FROM comments), 0),
                    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'comments'), 0))",
        [],
        |r| r.get(0),
    )
}

/// Make every comment id allocated from now on larger than `high_water`.
fn allocate_above(tx: &Connection, high_water: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'comments', ?1
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'comments')",
        [high_water],
    )?;
    tx.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'comments'", [high_water])?;
    Ok(())
}

/// Apply an `ownership` / `handover` event from the monolith's feed (inside the
/// feed transaction). Events for another feature, and replays (an epoch not
/// above the current one), change nothing.
pub fn apply_event(tx: &Connection, ev: &Event) -> anyhow::Result<()> {
    let feature = sync::payload_str(ev, "feature")?;
    if feature != FEATURE {
        tracing::warn!(event = ev.id, feature, "ignoring an ownership event for another feature");
        return Ok(());
    }
    let owner = sync::payload_str(ev, "owner")?;
    if owner != LEGACY && owner != SERVICE {
        anyhow::bail!("event {}: payload.owner must be {LEGACY:?} or {SERVICE:?}, not {owner:?}", ev.id);
    }
    let next =
        Ownership { owner, epoch: sync::payload_i64(ev, "epoch")?, high_water: sync::payload_i64(ev, "high_water")? };
    let current = Ownership::load(tx)?;
    if next.epoch <= current.epoch {
        tracing::info!(
            event = ev.id,
            epoch = next.epoch,
            current_epoch = current.epoch,
            "ignoring a replayed ownership event"
        );
        return Ok(());
    }
    next.store(tx)?;
    if next.is_service() {
        allocate_above(tx, next.high_water)?;
    }
    tracing::info!(event = ev.id, owner = %next.owner, epoch = next.epoch, high_water = next.high_water, "comments ownership changed");
    Ok(())
}

/// A change asked of this service (`POST /internal/ownership/comments`), in one
/// transaction: already `target` → the current state (idempotent); owner →
/// hand over to `target` (epoch + 1, high-water mark, `ownership` event in the
/// outbox); not the owner → 409.
pub fn request(conn: &mut Connection, target: &str) -> Result<Ownership, ApiError> {
    let tx = conn.transaction()?;
    let current = Ownership::load(&tx)?;
    if current.owner == target {
        return Ok(current);
    }
    if !current.is_service() {
        return Err(ApiError::not_owner(
            &current.owner,
            current.epoch,
            format!(
                "comments are owned by {} (epoch {}): only the owner can hand them over",
                current.owner, current.epoch
            ),
        ));
    }
    let next =
        Ownership { owner: target.to_string(), epoch: current.epoch + 1, high_water: comment_id_high_water(&tx)? };
    next.store(&tx)?;
    outbox::append(&tx, "ownership", 0, "handover", &next.event_payload())?;
    tx.commit()?;
    tracing::info!(owner = %next.owner, epoch = next.epoch, high_water = next.high_water, "comments handed over");
    Ok(next)
}
