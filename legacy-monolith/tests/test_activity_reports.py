def test_activity_log(client, api):
    (a, ha), (b, hb) = api.user(), api.user()
    p = api.project(ha)
    p2 = api.project(hb)
    t = api.task(ha, p["id"])
    client.patch(f"/api/tasks/{t['id']}", json={"status": "in_progress"}, headers=ha)
    c = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "x"}, headers=hb).json
    r = client.get(f"/api/activity?project={p['id']}", headers=ha)
    assert r.status_code == 200
    items = r.json["items"]
    assert [i["action"] for i in items] == ["project.create", "project_member.create", "task.create",
                                            "task.update", "comment.create"]
    assert set(items[0]) == {"id", "actor_id", "action", "entity_type", "entity_id", "project_id",
                             "details", "created_at"}
    assert items[3]["details"] == {"changes": {"status": {"from": "todo", "to": "in_progress"}}}
    assert items[4]["actor_id"] == b["id"] and items[4]["entity_id"] == c["id"]
    r = client.get(f"/api/activity?user={b['id']}", headers=ha).json
    assert [i["action"] for i in r["items"]] == ["user.create", "project.create", "project_member.create",
                                                 "comment.create"]
    r = client.get(f"/api/activity?user={b['id']}&project={p2['id']}&per_page=1", headers=ha).json
    assert r["total"] == 2 and len(r["items"]) == 1
    assert client.get("/api/activity?project=x", headers=ha).status_code == 400
    assert client.get("/api/activity", headers=ha).json["total"] >= 9


def test_reports(client, api):
    (a, ha), (b, hb) = api.user(), api.user()
    p = api.project(ha)
    api.add_member(ha, p["id"], b["id"])
    api.task(ha, p["id"], status="done", assignee_id=b["id"])
    api.task(ha, p["id"], status="todo", priority="high", assignee_id=b["id"], due_date="2000-01-01")
    api.task(ha, p["id"], status="in_progress", priority="low", assignee_id=b["id"], due_date="2999-01-01")
    t = api.task(ha, p["id"], status="done", due_date="2000-01-01")
    for body in ("one", "two"):
        assert client.post(f"/api/tasks/{t['id']}/comments", json={"body": body}, headers=hb).status_code == 201
    other = api.task(ha, api.project(ha)["id"])
    assert client.post(f"/api/tasks/{other['id']}/comments", json={"body": "x"}, headers=hb).status_code == 201
    r = client.get(f"/api/reports/projects/{p['id']}", headers=hb)
    assert r.status_code == 200
    assert r.json == {"project_id": p["id"], "total_tasks": 4,
                      "by_status": {"todo": 1, "in_progress": 1, "done": 2},
                      "by_priority": {"low": 1, "medium": 2, "high": 1},
                      "completion_percentage": 50.0, "overdue": 1, "total_comments": 2}
    r = client.get(f"/api/reports/users/{b['id']}/workload", headers=ha)
    assert r.json == {"user_id": b["id"], "open_tasks": 2, "by_status": {"todo": 1, "in_progress": 1},
                      "by_priority": {"low": 1, "medium": 0, "high": 1}, "overdue": 1}
    assert client.get("/api/reports/projects/999", headers=ha).status_code == 404
    assert client.get("/api/reports/users/999/workload", headers=ha).status_code == 404
    empty = api.project(ha)
    assert client.get(f"/api/reports/projects/{empty['id']}", headers=ha).json["completion_percentage"] == 0.0
