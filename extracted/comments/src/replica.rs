//! What this service copies from the monolith: users (for tokens), tasks (for
//! 404s and cascades), comments while the monolith owns them, and ownership —
//! through the change feed (`CommentsApplier`) or a one-off `backfill`.

use crate::ownership::{self, Ownership};
use crate::COLS;
use extracted_common::db;
use extracted_common::outbox;
use extracted_common::sync::{self, Applier, Event};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::path::Path as FsPath;

/// Applies `user`, `task`, `project` delete, `comment` and `ownership` events
/// (idempotent upserts / deletes) inside the feed transaction.
///
/// While this service owns comments:
/// - comment events from the monolith's feed are ignored (logged): after the
///   handover the monolith takes no comment writes, so any such event is stale
///   and must not overwrite a newer local write. The one kind it still emits —
///   the per-comment deletes of a task or project delete — is covered by the
///   task delete event that follows it in the same monolith transaction;
/// - a task (or project) delete deletes the task's comments here and publishes
///   one comment `delete` event each in this service's feed.
pub struct CommentsApplier;

impl Applier for CommentsApplier {
    fn apply(&self, tx: &Connection, ev: &Event) -> anyhow::Result<()> {
        match (ev.entity.as_str(), ev.op.as_str()) {
            ("user", "create" | "update") => {
                tx.execute(
                    "INSERT INTO users (id, username) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET username = excluded.username",
                    params![ev.entity_id, sync::payload_str(ev, "username")?],
                )?;
                db::raise_high_water(tx, "user", ev.entity_id)?;
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
                db::raise_high_water(tx, "task", ev.entity_id)?;
            }
            ("task", "delete") => delete_tasks(tx, &[ev.entity_id])?,
            ("project", "delete") => {
                // The monolith deletes (and announces) the project's tasks first; this is a safety net.
                let tasks: Vec<i64> = tx
                    .prepare("SELECT id FROM tasks WHERE project_id = ?1 ORDER BY id")?
                    .query_map([ev.entity_id], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                delete_tasks(tx, &tasks)?;
            }
            ("comment", _) if Ownership::load(tx)?.is_service() => {
                tracing::warn!(event = ev.id, op = %ev.op, comment = ev.entity_id,
                    "ignoring a comment event from the monolith's feed: this service owns comments");
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
                db::raise_high_water(tx, "comment", ev.entity_id)?;
            }
            ("comment", "delete") => {
                tx.execute("DELETE FROM comments WHERE id = ?1", [ev.entity_id])?;
            }
            ("ownership", "handover") => ownership::apply_event(tx, ev)?,
            _ => {}
        }
        Ok(())
    }
}

/// Delete tasks and their comments. As the owner of comments, publish one
/// comment `delete` event per comment (the monolith has already deleted its
/// copies: applying them there is a no-op); otherwise the monolith has
/// announced those deletes itself.
fn delete_tasks(tx: &Connection, task_ids: &[i64]) -> anyhow::Result<()> {
    let publish = Ownership::load(tx)?.is_service();
    for &task_id in task_ids {
        if publish {
            let ids: Vec<i64> = tx
                .prepare("SELECT id FROM comments WHERE task_id = ?1 ORDER BY id")?
                .query_map([task_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for &id in &ids {
                tx.execute("DELETE FROM comments WHERE id = ?1", [id])?;
                outbox::append(tx, "comment", id, "delete", &json!({"id": id, "task_id": task_id}))?;
            }
            if !ids.is_empty() {
                tracing::info!(
                    task = task_id,
                    comments = ids.len(),
                    "task deleted on the monolith: its comments deleted and published"
                );
            }
        } else {
            tx.execute("DELETE FROM comments WHERE task_id = ?1", [task_id])?;
        }
        tx.execute("DELETE FROM tasks WHERE id = ?1", [task_id])?;
    }
    Ok(())
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
/// Refused while either side says this service owns comments: the copy would
/// drop comment writes the monolith has not consumed yet.
pub fn backfill(conn: &mut Connection, monolith_db: &FsPath) -> anyhow::Result<BackfillStats> {
    let here = Ownership::load(conn)?;
    if here.is_service() {
        anyhow::bail!(
            "refusing to backfill: this service owns comments (epoch {}); hand them back to the monolith first",
            here.epoch
        );
    }
    let mut mono = db::open_monolith_readonly(monolith_db)?;
    let snap = mono.transaction()?;
    if let Some(there) = monolith_owner(&snap)? {
        if there != ownership::LEGACY {
            anyhow::bail!("refusing to backfill: the monolith says comments are owned by {there}");
        }
    }
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
    tx.execute_batch("DELETE FROM users; DELETE FROM tasks; DELETE FROM comments; DELETE FROM applied_high_water;")?;
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
    for (entity, max) in [
        ("user", users.last().map(|u| u.0)),
        ("task", tasks.last().map(|t| t.0)),
        ("comment", comments.last().map(|c| c.0)),
    ] {
        db::raise_high_water(&tx, entity, max.unwrap_or(0))?;
    }
    db::set_cursor(&tx, last_event_id)?;
    tx.commit()?;
    Ok(BackfillStats { users: users.len(), tasks: tasks.len(), comments: comments.len(), last_event_id })
}

/// The owner of comments in the monolith's database (`None` before it had an ownership table).
fn monolith_owner(snap: &Connection) -> rusqlite::Result<Option<String>> {
    let has_table: bool = snap.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ownership')",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    snap.query_row("SELECT owner FROM ownership WHERE feature = ?1", [ownership::FEATURE], |r| r.get(0)).optional()
}
