def test_project_crud_and_members(client, api):
    (a, ha), (b, hb), (c, hc) = api.user(), api.user(), api.user()
    r = client.post("/api/projects", json={"name": "Apollo", "description": "moon"}, headers=ha)
    assert r.status_code == 201
    p = r.json
    assert set(p) == {"id", "name", "description", "owner_id", "created_at", "updated_at"}
    assert p["owner_id"] == a["id"]
    assert client.get(f"/api/projects/{p['id']}", headers=hb).json == p
    assert client.get("/api/projects", headers=hb).json["total"] == 1
    r = client.post("/api/projects", json={"name": "  "}, headers=ha)
    assert r.status_code == 400 and r.json["field"] == "name" and r.json["message"] == "name must not be empty"
    # only the owner may modify
    r = client.patch(f"/api/projects/{p['id']}", json={"name": "X"}, headers=hb)
    assert r.status_code == 403
    r = client.patch(f"/api/projects/{p['id']}", json={"name": "Apollo 11"}, headers=ha)
    assert r.status_code == 200 and r.json["name"] == "Apollo 11" and r.json["description"] == "moon"
    # members
    r = client.get(f"/api/projects/{p['id']}/members", headers=hb)
    assert r.json["total"] == 1 and r.json["items"][0]["role"] == "owner"
    assert client.post(f"/api/projects/{p['id']}/members", json={"user_id": c["id"]}, headers=hb).status_code == 403
    m = api.add_member(ha, p["id"], b["id"])
    assert set(m) == {"id", "project_id", "user_id", "role", "added_at"} and m["role"] == "member"
    r = client.post(f"/api/projects/{p['id']}/members", json={"user_id": b["id"]}, headers=ha)
    assert r.status_code == 409
    r = client.post(f"/api/projects/{p['id']}/members", json={"user_id": 999}, headers=ha)
    assert r.status_code == 400 and r.json["field"] == "user_id"
    r = client.post(f"/api/projects/{p['id']}/members", json={"user_id": "2"}, headers=ha)
    assert r.status_code == 400 and r.json["message"] == "user_id must be an integer"
    assert client.get("/api/projects/999", headers=ha).json == {"error": "not_found",
                                                                "message": "project 999 not found"}
    # delete cascades tasks and comments, with events for each
    t = api.task(ha, p["id"])
    cm = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "hi"}, headers=hb).json
    assert client.delete(f"/api/projects/{p['id']}", headers=hb).status_code == 403
    r = client.delete(f"/api/projects/{p['id']}", headers=ha)
    assert r.status_code == 204 and r.data == b""
    assert client.get(f"/api/projects/{p['id']}", headers=ha).status_code == 404
    assert client.get(f"/api/tasks/{t['id']}", headers=ha).status_code == 404
    assert client.get(f"/api/comments/{cm['id']}", headers=ha).status_code == 404
    deletes = {(e["entity"], e["entity_id"]) for e in api.events() if e["op"] == "delete"}
    assert {("project", p["id"]), ("task", t["id"]), ("comment", cm["id"]),
            ("project_member", m["id"])} <= deletes


def test_task_crud_filters_pagination(client, api):
    (a, ha), (b, hb), (c, hc) = api.user(), api.user(), api.user()
    p = api.project(ha)
    api.add_member(ha, p["id"], b["id"])
    t = api.task(ha, p["id"], title="Write docs", priority="high", assignee_id=b["id"], due_date="2030-01-31")
    assert set(t) == {"id", "project_id", "title", "description", "status", "priority", "assignee_id",
                      "creator_id", "due_date", "completed_at", "created_at", "updated_at"}
    assert t["status"] == "todo" and t["due_date"] == "2030-01-31" and t["completed_at"] is None
    assert t["creator_id"] == a["id"]
    # non-member may read but not write
    assert client.get(f"/api/tasks/{t['id']}", headers=hc).status_code == 200
    r = client.post(f"/api/projects/{p['id']}/tasks", json={"title": "x"}, headers=hc)
    assert r.status_code == 403 and r.json["error"] == "forbidden"
    for body, field in [({}, "title"), ({"title": "x", "status": "nope"}, "status"),
                        ({"title": "x", "priority": 3}, "priority"),
                        ({"title": "x", "assignee_id": "b"}, "assignee_id"),
                        ({"title": "x", "assignee_id": c["id"]}, "assignee_id"),
                        ({"title": "x", "due_date": "31/01/2030"}, "due_date"),
                        ({"title": "x", "due_date": "2030-02-31"}, "due_date")]:
        r = client.post(f"/api/projects/{p['id']}/tasks", json=body, headers=ha)
        assert r.status_code == 400 and r.json["field"] == field, (body, r.json)
    for i in range(5):
        api.task(hb, p["id"], title=f"t{i}", status="in_progress" if i % 2 else "todo",
                 priority="low", assignee_id=a["id"] if i < 2 else None)
    base = f"/api/projects/{p['id']}/tasks"
    assert client.get(base, headers=ha).json["total"] == 6
    assert client.get(base + "?status=in_progress", headers=ha).json["total"] == 2
    assert client.get(base + "?priority=high", headers=ha).json["total"] == 1
    assert client.get(base + f"?assignee={a['id']}&priority=low", headers=ha).json["total"] == 2
    r = client.get(base + "?per_page=4&page=2", headers=ha).json
    assert [x["title"] for x in r["items"]] == ["t3", "t4"] and r["total"] == 6
    assert client.get(base + "?status=bogus", headers=ha).status_code == 400
    assert client.get("/api/projects/999/tasks", headers=ha).status_code == 404
    # patch: status -> done sets completed_at; back clears it; unassign with null
    r = client.patch(f"/api/tasks/{t['id']}", json={"status": "done", "assignee_id": None}, headers=hb)
    assert r.status_code == 200 and r.json["completed_at"] is not None and r.json["assignee_id"] is None
    r = client.patch(f"/api/tasks/{t['id']}", json={"status": "todo", "due_date": None}, headers=hb)
    assert r.json["completed_at"] is None and r.json["due_date"] is None
    assert client.patch(f"/api/tasks/{t['id']}", json={"title": ""}, headers=hb).status_code == 400
    assert client.patch(f"/api/tasks/{t['id']}", json={"title": "x"}, headers=hc).status_code == 403
    assert client.patch("/api/tasks/999", json={}, headers=ha).status_code == 404
    assert client.delete(f"/api/tasks/{t['id']}", headers=hc).status_code == 403
    assert client.delete(f"/api/tasks/{t['id']}", headers=ha).status_code == 204
    assert client.get(f"/api/tasks/{t['id']}", headers=ha).json == {"error": "not_found",
                                                                   "message": f"task {t['id']} not found"}
    assert client.delete(f"/api/tasks/{t['id']}", headers=ha).status_code == 404


def test_assignment_and_completion_enqueue_notifications(app, client, api):
    import sqlite3
    (a, ha), (b, hb) = api.user(), api.user()
    p = api.project(ha)
    api.add_member(ha, p["id"], b["id"])
    t = api.task(ha, p["id"], assignee_id=b["id"])
    client.patch(f"/api/tasks/{t['id']}", json={"status": "done"}, headers=hb)
    conn = sqlite3.connect(app.config["DB_PATH"])
    rows = conn.execute("SELECT kind, to_addr, status FROM notifications ORDER BY id").fetchall()
    assert rows == [("task_assigned", b["email"], "pending"), ("task_completed", a["email"], "pending"),
                    ("task_completed", b["email"], "pending")]
