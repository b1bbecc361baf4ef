"""Handing comment writes to the comments service (issue 18): the handover, the 421, the 409."""
import sqlite3

import pytest

import taskapp.api.comments
from taskapp import create_app, ownership

TOKEN = {"X-Internal-Token": "own-s3cret"}


@pytest.fixture
def app(tmp_path):
    return create_app({"DB_PATH": str(tmp_path / "own.db"), "DATA_DIR": str(tmp_path / "data"),
                       "JWT_SECRET": "own-test-secret-own-test-secret-12345", "NOTIFY_WORKER": False,
                       "INTERNAL_TOKEN": "own-s3cret", "TESTING": True})


def _events(client, after=0):
    return client.get(f"/internal/events?after={after}&limit=1000", headers=TOKEN).json["events"]


def _hand_over(client, owner="comments", headers=TOKEN):
    return client.post("/internal/ownership/comments", json={"owner": owner}, headers=headers)


def _rows(app, sql):
    conn = sqlite3.connect(app.config["DB_PATH"])
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_comments_start_owned_by_the_monolith_at_epoch_one(client):
    r = client.get("/internal/ownership", headers=TOKEN)
    assert r.status_code == 200
    assert r.json["features"] == {"comments": {"owner": "legacy", "epoch": 1, "high_water": 0}}
    assert r.json["applied_event_id"] == 0
    assert r.json["consumer"] == {"service_url": None, "last_error": None, "last_error_at": None,
                                  "applied_at": None}


def test_handover_sets_owner_epoch_high_water_and_appends_the_ownership_event(client, api):
    _, h = api.user()
    t = api.task(h, api.project(h)["id"])
    ids = [client.post(f"/api/tasks/{t['id']}/comments", json={"body": str(i)}, headers=h).json["id"]
           for i in range(3)]
    assert client.delete(f"/api/comments/{ids[-1]}", headers=h).status_code == 204  # high water counts it
    last = _events(client)[-1]["id"]
    r = _hand_over(client)
    assert r.status_code == 200
    assert r.json == {"feature": "comments", "owner": "comments", "epoch": 2, "high_water": ids[-1]}
    evs = _events(client, last)
    assert len(evs) == 1
    assert {k: evs[0][k] for k in ("entity", "entity_id", "op", "payload")} == {
        "entity": "ownership", "entity_id": 0, "op": "handover",
        "payload": {"feature": "comments", "owner": "comments", "epoch": 2, "high_water": ids[-1]}}
    assert client.get("/internal/ownership", headers=TOKEN).json["features"]["comments"] == {
        "owner": "comments", "epoch": 2, "high_water": ids[-1]}
    # asking again for the owner there already is: same state, no second event
    r = _hand_over(client)
    assert r.status_code == 200 and r.json["epoch"] == 2
    assert len(_events(client, last)) == 1


def test_comment_writes_answer_421_after_the_handover_and_reads_stay_200(app, client, api):
    _, h = api.user()
    t = api.task(h, api.project(h)["id"])
    c = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "before"}, headers=h).json
    assert _hand_over(client).status_code == 200
    last = _events(client)[-1]["id"]
    expected = {"error": "misdirected", "message": "comments are owned by comments (epoch 2)",
                "owner": "comments", "epoch": 2}
    writes = [("post", f"/api/tasks/{t['id']}/comments", {"body": "after"}),
              ("patch", f"/api/comments/{c['id']}", {"body": "after"}),
              ("delete", f"/api/comments/{c['id']}", None),
              ("post", "/api/tasks/999/comments", {"body": "x"}),   # before the 404 lookup
              ("patch", f"/api/comments/{c['id']}", {"nobody": 1})]  # before the 400 body check
    for headers in (h, {}, {"Authorization": "Bearer not-a-token"}):  # before authentication
        for method, url, body in writes:
            r = getattr(client, method)(url, json=body, headers=headers)
            assert (r.status_code, r.json) == (421, expected), (method, url, headers)
            assert r.headers["Content-Type"] == "application/json"
    assert client.get(f"/api/comments/{c['id']}", headers=h).json == c
    r = client.get(f"/api/tasks/{t['id']}/comments", headers=h)
    assert r.status_code == 200 and r.json["items"] == [c]
    assert client.head(f"/api/comments/{c['id']}", headers=h).status_code == 200
    assert client.options(f"/api/comments/{c['id']}", headers=h).status_code == 200
    assert _events(client, last) == []
    assert _rows(app, "SELECT id, body FROM comments") == [(c["id"], "before")]


def test_a_comment_write_that_commits_after_the_handover_is_refused(app, client, api, monkeypatch):
    """The ownership is checked again inside the write transaction: a write that passed the early
    check just before the handover committed does not land on the monolith."""
    _, h = api.user()
    t = api.task(h, api.project(h)["id"])
    real_json_body = taskapp.api.comments.json_body

    def handover_meanwhile():
        ownership.hand_over("comments")  # another request commits the handover now
        return real_json_body()

    monkeypatch.setattr(taskapp.api.comments, "json_body", handover_meanwhile)
    r = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "late"}, headers=h)
    assert r.status_code == 421 and r.json["owner"] == "comments" and r.json["epoch"] == 2
    assert _rows(app, "SELECT COUNT(*) FROM comments") == [(0,)]
    assert [e["entity"] for e in _events(client)][-1] == "ownership"


def test_handover_is_refused_with_409_when_this_side_is_not_the_owner(client):
    assert _hand_over(client).status_code == 200
    r = _hand_over(client, "legacy")
    assert r.status_code == 409
    assert r.json == {"error": "conflict", "owner": "comments", "epoch": 2,
                      "message": "comments are owned by comments (epoch 2), not by this side"}
    assert client.get("/internal/ownership", headers=TOKEN).json["features"]["comments"]["epoch"] == 2


@pytest.mark.parametrize("raw, field, message", [
    (b"{not json", None, "malformed JSON body"),
    (b"", None, "malformed JSON body"),
    (b'["comments"]', None, "JSON body must be an object"),
    (b"{}", "owner", "owner is required"),
    (b'{"owner": "nobody"}', "owner", "owner must be one of: legacy, comments"),
    (b'{"owner": 7}', "owner", "owner must be one of: legacy, comments"),
    (b'{"owner": null}', "owner", "owner must be one of: legacy, comments"),
])
def test_handover_with_a_bad_body_answers_400_and_changes_nothing(client, raw, field, message):
    r = client.post("/internal/ownership/comments", data=raw, headers={**TOKEN, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json["message"] == message and r.json.get("field") == field
    assert r.json["error"] == ("validation_error" if field else "bad_request")
    assert client.get("/internal/ownership", headers=TOKEN).json["features"]["comments"]["epoch"] == 1
    assert _events(client) == []


def test_ownership_endpoints_need_the_internal_token(client):
    for headers in ({}, {"X-Internal-Token": "wrong"}):
        assert client.get("/internal/ownership", headers=headers).status_code == 401
        r = _hand_over(client, headers=headers)
        assert r.status_code == 401 and r.json["message"] == "missing or invalid X-Internal-Token"
    assert client.get("/internal/ownership", headers=TOKEN).json["features"]["comments"]["owner"] == "legacy"


def test_a_new_comment_queues_one_mail_to_the_assignee_or_else_the_task_creator(app, client, api):
    (a, ha), (b, hb) = api.user(), api.user()
    p = api.project(ha)
    api.add_member(ha, p["id"], b["id"])
    assigned = api.task(ha, p["id"], assignee_id=b["id"])
    unassigned = api.task(ha, p["id"])
    c1 = client.post(f"/api/tasks/{assigned['id']}/comments", json={"body": "hi"}, headers=ha).json
    c2 = client.post(f"/api/tasks/{unassigned['id']}/comments", json={"body": "yo"}, headers=hb).json
    rows = _rows(app, "SELECT recipient_id, subject, dedup_key FROM notifications WHERE kind = 'comment_added'"
                      " ORDER BY id")
    assert rows == [(b["id"], f"[taskapp] New comment on task #{assigned['id']}: Task", f"comment_added:{c1['id']}"),
                    (a["id"], f"[taskapp] New comment on task #{unassigned['id']}: Task",
                     f"comment_added:{c2['id']}")]


def test_a_database_from_before_handovers_is_migrated_keeping_its_event_ids(tmp_path):
    """An older file: events.op without 'handover', notifications without dedup_key."""
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL,
            entity_id INTEGER NOT NULL, op TEXT NOT NULL CHECK (op IN ('create', 'update', 'delete')),
            payload TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE notifications (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            recipient_id INTEGER NOT NULL, to_addr TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL, claimed_by TEXT, claimed_at TEXT, last_error TEXT,
            created_at TEXT NOT NULL, sent_at TEXT);
        INSERT INTO events (entity, entity_id, op, payload, created_at) VALUES
            ('user', 1, 'create', '{"id":1}', '2024-01-01 09:00:00'),
            ('user', 2, 'create', '{"id":2}', '2024-01-01 09:00:00'),
            ('user', 3, 'create', '{"id":3}', '2024-01-01 09:00:00');
        DELETE FROM events WHERE id = 3;
        INSERT INTO notifications (kind, recipient_id, to_addr, subject, body, next_attempt_at, created_at)
            VALUES ('task_assigned', 1, 'a@example.com', 's', 'b', '2024-01-01 09:00:00', '2024-01-01 09:00:00');
    """)
    conn.close()
    app = create_app({"DB_PATH": path, "DATA_DIR": str(tmp_path / "data"), "NOTIFY_WORKER": False,
                      "JWT_SECRET": "own-test-secret-own-test-secret-12345", "TESTING": True})
    create_app(dict(app.config))  # every start runs the schema again: idempotent
    c = app.test_client()
    assert c.post("/internal/ownership/comments", json={"owner": "comments"}).status_code == 200
    evs = c.get("/internal/events").json["events"]
    assert [(e["id"], e["entity"], e["op"]) for e in evs] == [
        (1, "user", "create"), (2, "user", "create"), (4, "ownership", "handover")]
    assert _rows(app, "SELECT kind, dedup_key FROM notifications") == [("task_assigned", None)]
