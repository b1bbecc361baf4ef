//! A service's own change feed (a transactional outbox): rows appended in the
//! same transaction as the change they describe, served at
//! `GET /internal/events?after=&limit=` in exactly the monolith's shape, so the
//! monolith can follow a service the way the services follow the monolith.

use crate::pagination::int_arg;
use crate::{dates, flask_json, ApiError};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

/// The outbox table (same columns as the monolith's `events`; `op` also takes
/// `handover` for ownership events).
pub const OUTBOX_SQL: &str = "CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    entity     TEXT    NOT NULL,
    entity_id  INTEGER NOT NULL,
    op         TEXT    NOT NULL,
    payload    TEXT    NOT NULL,             -- compact JSON, keys sorted
    created_at TEXT    NOT NULL              -- UTC 'YYYY-MM-DD HH:MM:SS'
);";

/// `limit` when the caller gives none, and the largest one served (as on the monolith).
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// Append one event inside the caller's transaction; returns its id.
pub fn append(tx: &Connection, entity: &str, entity_id: i64, op: &str, payload: &Value) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO events (entity, entity_id, op, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![entity, entity_id, op, flask_json::dumps(payload), dates::now_ts()],
    )?;
    Ok(tx.last_insert_rowid())
}

/// The id of the last event published (0 when none).
pub fn last_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
}

/// `?after=` (default 0, >= 0) and `?limit=` (default 100, >= 1, capped at 1000),
/// with the monolith's `int_arg` errors.
pub fn page_params(query: Option<&str>) -> Result<(i64, i64), ApiError> {
    let after = int_arg(query, "after", 0, 0)?;
    let limit = int_arg(query, "limit", DEFAULT_LIMIT, 1)?.min(MAX_LIMIT);
    Ok((after, limit))
}

/// `{"events": [{id, entity, entity_id, op, payload, created_at}], "next_after": N}`:
/// events after `after` in id order; `next_after` is the last id served, or `after`.
pub fn page(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Value> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, entity, entity_id, op, payload, created_at FROM events WHERE id > ?1 ORDER BY id ASC LIMIT ?2",
    )?;
    let events = stmt
        .query_map(params![after, limit], |r| {
            let payload: String = r.get(4)?;
            Ok(json!({
                "id": r.get::<_, i64>(0)?,
                "entity": r.get::<_, String>(1)?,
                "entity_id": r.get::<_, i64>(2)?,
                "op": r.get::<_, String>(3)?,
                "payload": serde_json::from_str::<Value>(&payload).unwrap_or(Value::Null),
                "created_at": dates::ts_to_http(&r.get::<_, String>(5)?),
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let next_after = events.last().and_then(|e| e["id"].as_i64()).unwrap_or(after);
    Ok(json!({"events": events, "next_after": next_after}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(OUTBOX_SQL).unwrap();
        c
    }

    #[test]
    fn events_are_served_in_order_after_the_cursor() {
        let c = db();
        for i in 1..=5 {
            append(&c, "comment", 100 + i, "create", &json!({"id": 100 + i, "body": "é"})).unwrap();
        }
        let p = page(&c, 2, 2).unwrap();
        let ids: Vec<i64> = p["events"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
        assert_eq!((ids, p["next_after"].as_i64()), (vec![3, 4], Some(4)));
        assert_eq!(p["events"][0]["payload"], json!({"id": 103, "body": "é"}));
        assert!(p["events"][0]["created_at"].as_str().unwrap().ends_with(" GMT"));
        let stored: String = c.query_row("SELECT payload FROM events WHERE id = 1", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, r#"{"body":"\u00e9","id":101}"#);
        assert_eq!(page(&c, 5, 100).unwrap(), json!({"events": [], "next_after": 5}));
        assert_eq!(last_id(&c).unwrap(), 5);
    }

    #[test]
    fn page_parameters_are_checked_like_the_monolith() {
        assert_eq!(page_params(None).unwrap(), (0, 100));
        assert_eq!(page_params(Some("after=7&limit=5000")).unwrap(), (7, 1000));
        let e = page_params(Some("after=x")).unwrap_err();
        assert_eq!((e.status.as_u16(), e.message.as_str()), (400, "after must be an integer"));
        let e = page_params(Some("after=-1")).unwrap_err();
        assert_eq!(e.message, "after must be >= 0");
        let e = page_params(Some("limit=0")).unwrap_err();
        assert_eq!(e.message, "limit must be >= 1");
    }
}
