//! SQLite helpers shared by the services.

use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub type Db = Arc<Mutex<Connection>>;

pub const SYNC_STATE_SQL: &str = "CREATE TABLE IF NOT EXISTS sync_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);";

/// The largest id of each entity this replica has ever applied (from the feed or a
/// backfill). An id above it may exist on the monolith already: the replica is
/// behind, so it cannot answer "unknown" or "not found" authoritatively.
pub const HIGH_WATER_SQL: &str = "CREATE TABLE IF NOT EXISTS applied_high_water (
    entity TEXT PRIMARY KEY,   -- 'user', 'task', 'comment'
    max_id INTEGER NOT NULL
);";

/// Open (creating if needed) a database with WAL, foreign keys and a busy timeout,
/// then run `schema` (idempotent DDL) and the sync-state table.
pub fn open(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(schema)?;
    conn.execute_batch(SYNC_STATE_SQL)?;
    conn.execute_batch(HIGH_WATER_SQL)?;
    Ok(conn)
}

pub fn shared(conn: Connection) -> Db {
    Arc::new(Mutex::new(conn))
}

/// Last change-feed event id applied to this database (0 if never synced).
pub fn cursor(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn.query_row("SELECT last_event_id FROM sync_state WHERE id = 1", [], |r| r.get(0)).optional()?.unwrap_or(0))
}

pub fn set_cursor(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO sync_state (id, last_event_id) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET last_event_id = excluded.last_event_id",
        [id],
    )?;
    Ok(())
}

/// Record that `entity` `id` has been applied (never lowers the mark).
pub fn raise_high_water(conn: &Connection, entity: &str, id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO applied_high_water (entity, max_id) VALUES (?1, ?2)
         ON CONFLICT(entity) DO UPDATE SET max_id = MAX(max_id, excluded.max_id)",
        rusqlite::params![entity, id],
    )?;
    Ok(())
}

/// The largest `entity` id applied so far: the recorded mark, or the largest id
/// in `table` (a database written before marks were recorded).
pub fn high_water(conn: &Connection, entity: &str, table: &'static str) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!(
            "SELECT MAX(COALESCE((SELECT max_id FROM applied_high_water WHERE entity = ?1), 0),
                        COALESCE((SELECT MAX(id) FROM {table}), 0))"
        ),
        [entity],
        |r| r.get(0),
    )
}

/// Open the monolith's database file read-only (for backfill).
pub fn open_monolith_readonly(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The monolith's current max event id (the sync starting point after a backfill).
pub fn monolith_max_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
}
