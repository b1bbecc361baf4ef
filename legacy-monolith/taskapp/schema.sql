-- =====================================================================
-- strangler legacy monolith: Task Management System -- SQLite schema
-- =====================================================================
-- Conventions (read this before copying data into another service):
--  * Every table has an INTEGER PRIMARY KEY `id` (SQLite rowid alias),
--    except where noted.  List endpoints order by `id` ascending.
--  * Timestamps are TEXT in UTC, format 'YYYY-MM-DD HH:MM:SS' (no zone,
--    no fractional seconds).  The API renders them as RFC 822 strings
--    ("Tue, 25 Nov 2026 20:26:10 GMT") via Flask's JSON provider.
--  * Dates (tasks.due_date) are TEXT 'YYYY-MM-DD' and are returned by
--    the API verbatim as that string.
--  * Enumerations are TEXT guarded by CHECK constraints.
--  * PRAGMA foreign_keys=ON and journal_mode=WAL are set by the app.
--    Deletes are performed explicitly by the application (children
--    first) so that every deleted row produces an `events` row; the
--    ON DELETE CASCADE clauses are a safety net only.
--  * The file is idempotent (CREATE ... IF NOT EXISTS) and is executed
--    on every application start.
-- =====================================================================

-- Users. `password_hash` is a werkzeug.security hash string
-- (e.g. 'pbkdf2:sha256:600000$salt$hex' or 'scrypt:...'); it is NEVER
-- returned by the API nor written into `events`.
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,          -- 3..32 chars [A-Za-z0-9_.-], case-sensitive unique
    email         TEXT    NOT NULL UNIQUE,          -- stored lower-cased, unique
    password_hash TEXT    NOT NULL,
    full_name     TEXT    NOT NULL DEFAULT '',      -- 0..100 chars
    created_at    TEXT    NOT NULL,                 -- UTC 'YYYY-MM-DD HH:MM:SS'
    updated_at    TEXT    NOT NULL                  -- UTC, = created_at until first update
);

-- Projects. The owner is also stored as a project_members row (role 'owner').
CREATE TABLE IF NOT EXISTS projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,                   -- 1..200 chars (not unique)
    description TEXT    NOT NULL DEFAULT '',        -- 0..5000 chars
    owner_id    INTEGER NOT NULL REFERENCES users(id),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS project_members (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    role       TEXT    NOT NULL CHECK (role IN ('owner', 'member')),
    added_at   TEXT    NOT NULL,
    UNIQUE (project_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_project_members_user ON project_members(user_id);

-- Tasks. priority is a string enum: 'low' | 'medium' | 'high'.
CREATE TABLE IF NOT EXISTS tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    title        TEXT    NOT NULL,                  -- 1..200 chars
    description  TEXT    NOT NULL DEFAULT '',       -- 0..10000 chars
    status       TEXT    NOT NULL DEFAULT 'todo'   CHECK (status   IN ('todo', 'in_progress', 'done')),
    priority     TEXT    NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high')),
    assignee_id  INTEGER REFERENCES users(id),      -- NULL = unassigned; must be a project member
    creator_id   INTEGER NOT NULL REFERENCES users(id),
    due_date     TEXT,                              -- NULL or 'YYYY-MM-DD'
    completed_at TEXT,                              -- set when status becomes 'done', cleared when it leaves 'done'
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_tasks_project  ON tasks(project_id);
CREATE INDEX IF NOT EXISTS idx_tasks_assignee ON tasks(assignee_id);

-- Comments on tasks. Only the author may edit/delete a comment.
CREATE TABLE IF NOT EXISTS comments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    author_id  INTEGER NOT NULL REFERENCES users(id),
    body       TEXT    NOT NULL,                    -- 1..10000 chars, stored exactly as sent (not trimmed)
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_comments_task ON comments(task_id);

-- Attachments. The file content lives on disk at
-- $TASKAPP_DATA_DIR/attachments/<storage_name>; storage_name is internal.
CREATE TABLE IF NOT EXISTS attachments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    uploader_id  INTEGER NOT NULL REFERENCES users(id),
    filename     TEXT    NOT NULL,                  -- client-supplied name, sanitised with secure_filename
    content_type TEXT    NOT NULL,                  -- as sent by the client (default application/octet-stream)
    size         INTEGER NOT NULL,                  -- bytes
    sha256       TEXT    NOT NULL,                  -- hex digest of the content
    storage_name TEXT    NOT NULL UNIQUE,           -- random hex name on disk (never returned by the API)
    created_at   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_attachments_task ON attachments(task_id);

-- Append-only audit trail: one row per API write.
CREATE TABLE IF NOT EXISTS activity_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    actor_id    INTEGER,                            -- user who did it (no FK: survives user changes)
    action      TEXT    NOT NULL,                   -- '<entity>.<verb>', e.g. 'task.update', 'comment.delete'
    entity_type TEXT    NOT NULL,                   -- 'user','project','project_member','task','comment','attachment'
    entity_id   INTEGER NOT NULL,
    project_id  INTEGER,                            -- NULL for user events
    details     TEXT    NOT NULL DEFAULT '{}',      -- JSON object
    created_at  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_activity_project ON activity_log(project_id);
CREATE INDEX IF NOT EXISTS idx_activity_actor   ON activity_log(actor_id);

-- Transactional outbox / change feed, served at GET /internal/events.
-- Inserted in the SAME transaction as the write it describes.
--   entity : 'user' | 'project' | 'project_member' | 'task' | 'comment' | 'attachment'
--            | 'ownership' (a write handover, see the `ownership` table)
--   op     : 'create' | 'update' | 'delete' | 'handover' (entity 'ownership' only)
--   payload: compact JSON text, keys sorted. For create/update: the full
--            resource exactly as the API returns it (datetimes already as
--            RFC 822 strings). For delete: {"id": <entity_id>}. For a
--            handover: {"epoch","feature","high_water","owner"}, entity_id 0.
-- (A database made before 'handover' existed gets this CHECK through the
--  table rebuild in db.migrate(), which keeps every id and the sequence.)
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    entity     TEXT    NOT NULL,
    entity_id  INTEGER NOT NULL,
    op         TEXT    NOT NULL CHECK (op IN ('create', 'update', 'delete', 'handover')),
    payload    TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);

-- E-mail notification queue, drained by a background thread in every
-- gunicorn worker. Rows are claimed atomically (BEGIN IMMEDIATE + UPDATE
-- ... WHERE status='pending'), so several workers never send one twice.
CREATE TABLE IF NOT EXISTS notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,               -- 'task_assigned' | 'task_completed' | 'comment_added'
    recipient_id    INTEGER NOT NULL,
    to_addr         TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    claimed_by      TEXT,                           -- '<hostname>:<pid>:<thread>' of the claiming worker
    claimed_at      TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    sent_at         TEXT,
    dedup_key       TEXT                            -- e.g. 'comment_added:42': at most one row per key
                                                    -- (NULL: no dedup); added by db.migrate() to older files
);
CREATE INDEX IF NOT EXISTS idx_notifications_status ON notifications(status, next_attempt_at);
CREATE UNIQUE INDEX IF NOT EXISTS idx_notifications_dedup ON notifications(dedup_key);

-- Who accepts the writes of a movable feature (issue 18). One row per
-- feature; `comments` starts owned by 'legacy' (this monolith), epoch 1.
-- A handover is ONE transaction on the current owner: owner := new owner,
-- epoch := epoch + 1, high_water := the largest id of the feature that
-- exists or ever existed here, plus an 'ownership'/'handover' event in
-- `events`. The other side takes over when it applies that event from the
-- feed. Ownership coming back (the service hands back) is applied from the
-- service's feed by taskapp/feed_consumer.py; events with an epoch <= the
-- stored one are replays and are ignored.
CREATE TABLE IF NOT EXISTS ownership (
    feature    TEXT    PRIMARY KEY,                 -- 'comments'
    owner      TEXT    NOT NULL,                    -- 'legacy' | 'comments'
    epoch      INTEGER NOT NULL,                    -- bumped by every handover
    high_water INTEGER NOT NULL DEFAULT 0,          -- largest id at the last handover
    updated_at TEXT                                 -- UTC, NULL until the first handover
);
INSERT OR IGNORE INTO ownership (feature, owner, epoch, high_water) VALUES ('comments', 'legacy', 1, 0);

-- Cursors of the feeds this monolith consumes. 'comments' = the comments
-- service's GET /internal/events; `applied_event_id` is advanced in the
-- same transaction as the rows it applied. `last_error` is the consumer's
-- current failure (NULL while it works), written only when it changes.
CREATE TABLE IF NOT EXISTS feed_cursors (
    source           TEXT    PRIMARY KEY,
    applied_event_id INTEGER NOT NULL DEFAULT 0,
    updated_at       TEXT,
    last_error       TEXT,
    last_error_at    TEXT
);
INSERT OR IGNORE INTO feed_cursors (source) VALUES ('comments');
