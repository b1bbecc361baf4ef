import io
import sqlite3

import taskapp.db


def _count(app, table):
    conn = sqlite3.connect(app.config["DB_PATH"])
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_every_write_emits_event_matching_api(client, api):
    u, h = api.user("evuser", full_name="Ev User")
    evs = api.events()
    assert len(evs) == 1
    e = evs[0]
    assert set(e) == {"id", "entity", "entity_id", "op", "payload", "created_at"}
    assert (e["entity"], e["entity_id"], e["op"]) == ("user", u["id"], "create")
    assert e["payload"] == u and "password_hash" not in e["payload"]
    (o, ho) = api.user()
    p = api.project(h)
    t = api.task(h, p["id"])
    c = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "x"}, headers=h).json
    c2 = client.patch(f"/api/comments/{c['id']}", json={"body": "y"}, headers=h).json
    u2 = client.patch(f"/api/users/{u['id']}", json={"password": "another-pass", "full_name": "E"},
                      headers=h).json
    t2 = client.patch(f"/api/tasks/{t['id']}", json={"status": "done"}, headers=h).json
    p2 = client.patch(f"/api/projects/{p['id']}", json={"description": "d"}, headers=h).json
    a = client.post(f"/api/tasks/{t['id']}/attachments", headers=h,
                    data={"file": (io.BytesIO(b"abc"), "a.txt", "text/plain")}).json
    client.delete(f"/api/attachments/{a['id']}", headers=h)
    client.delete(f"/api/comments/{c['id']}", headers=h)
    got = [(e["entity"], e["op"], e["payload"]) for e in api.events(after=1)]
    assert got[0][0:2] == ("user", "create")
    assert got[1] == ("project", "create", p)
    assert got[2][0:2] == ("project_member", "create")
    assert got[3:] == [
        ("task", "create", t), ("comment", "create", c), ("comment", "update", c2), ("user", "update", u2),
        ("task", "update", t2), ("project", "update", p2), ("attachment", "create", a),
        ("attachment", "delete", {"id": a["id"]}), ("comment", "delete", {"id": c["id"]}),
    ]
    for e in api.events():
        assert "password" not in str(e["payload"])


def test_reads_and_failed_writes_emit_nothing(app, client, api):
    u, h = api.user("fwuser")
    n = _count(app, "events")
    client.get("/api/users", headers=h)
    client.post("/api/auth/register", json={"username": "fwuser", "email": "z@z.z", "password": "password1"})
    client.post("/api/projects", json={}, headers=h)
    client.patch(f"/api/users/{u['id']}", json={}, headers=h)  # no-op patch
    client.post("/api/tasks/99/comments", json={"body": "x"}, headers=h)
    assert _count(app, "events") == n


def test_failure_inside_transaction_rolls_back_event(app, client, api, monkeypatch):
    _, h = api.user()
    p = api.project(h)
    t = api.task(h, p["id"])
    before = {tbl: _count(app, tbl) for tbl in ("events", "comments", "activity_log")}

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(taskapp.db, "log_activity", boom)  # fails AFTER the row+event inserts
    app.config["PROPAGATE_EXCEPTIONS"] = False
    r = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "x"}, headers=h)
    assert r.status_code == 500 and r.json == {"error": "internal_error", "message": "internal server error"}
    assert {tbl: _count(app, tbl) for tbl in before} == before


def test_feed_paging_and_limits(client, api):
    for _ in range(3):
        api.user()
    r = client.get("/internal/events")
    assert r.status_code == 200 and [e["id"] for e in r.json["events"]] == [1, 2, 3]
    assert r.json["next_after"] == 3
    r = client.get("/internal/events?after=1&limit=1").json
    assert [e["id"] for e in r["events"]] == [2] and r["next_after"] == 2
    r = client.get("/internal/events?after=3").json
    assert r == {"events": [], "next_after": 3}
    assert client.get("/internal/events?limit=5000").status_code == 200
    r = client.get("/internal/events?limit=0")
    assert r.status_code == 400 and r.json["field"] == "limit"
    r = client.get("/internal/events?after=abc")
    assert r.status_code == 400 and r.json == {"error": "validation_error", "field": "after",
                                               "message": "after must be an integer"}


def test_internal_token(app, client, api):
    app.config["INTERNAL_TOKEN"] = "s3cret"
    assert client.get("/internal/events").status_code == 401
    assert client.get("/internal/events", headers={"X-Internal-Token": "nope"}).status_code == 401
    r = client.get("/internal/events", headers={"X-Internal-Token": "s3cret"})
    assert r.status_code == 200
