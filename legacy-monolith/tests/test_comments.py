import pytest


@pytest.fixture
def setup(api):
    (a, ha), (b, hb) = api.user(), api.user()
    p = api.project(ha)
    t = api.task(ha, p["id"])
    return a, ha, b, hb, t


def test_comment_lifecycle(client, api, setup):
    a, ha, b, hb, t = setup
    # any authenticated user (even a non-member) may comment
    r = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "  hello  "}, headers=hb)
    assert r.status_code == 201
    c = r.json
    assert set(c) == {"id", "task_id", "author_id", "body", "created_at", "updated_at"}
    assert c["body"] == "  hello  " and c["author_id"] == b["id"] and c["task_id"] == t["id"]
    assert client.get(f"/api/comments/{c['id']}", headers=ha).json == c
    api_list = client.get(f"/api/tasks/{t['id']}/comments", headers=ha).json
    assert api_list == {"items": [c], "page": 1, "per_page": 20, "total": 1}
    # only the author may edit / delete
    r = client.patch(f"/api/comments/{c['id']}", json={"body": "hijack"}, headers=ha)
    assert r.status_code == 403 and r.json == {"error": "forbidden",
                                               "message": f"only the author can modify comment {c['id']}"}
    assert client.delete(f"/api/comments/{c['id']}", headers=ha).status_code == 403
    r = client.patch(f"/api/comments/{c['id']}", json={"body": "edited"}, headers=hb)
    assert r.status_code == 200 and r.json["body"] == "edited" and r.json["created_at"] == c["created_at"]
    r = client.delete(f"/api/comments/{c['id']}", headers=hb)
    assert r.status_code == 204 and r.data == b""
    assert client.get(f"/api/comments/{c['id']}", headers=hb).json == {
        "error": "not_found", "message": f"comment {c['id']} not found"}
    assert client.delete(f"/api/comments/{c['id']}", headers=hb).status_code == 404
    assert client.patch(f"/api/comments/{c['id']}", json={"body": "x"}, headers=hb).status_code == 404


def test_comment_validation(client, setup):
    a, ha, b, hb, t = setup
    url = f"/api/tasks/{t['id']}/comments"
    cases = [
        ({}, "body is required"),
        ({"body": None}, "body must be a string"),
        ({"body": 12}, "body must be a string"),
        ({"body": ""}, "body must not be empty"),
        ({"body": "   \n"}, "body must not be empty"),
        ({"body": "x" * 10001}, "body must be at most 10000 characters"),
    ]
    for body, msg in cases:
        r = client.post(url, json=body, headers=ha)
        assert r.status_code == 400
        assert r.json == {"error": "validation_error", "field": "body", "message": msg}
    assert client.post(url, json={"body": "x" * 10000}, headers=ha).status_code == 201
    r = client.post(url, data="nope", headers=ha)
    assert r.status_code == 400 and r.json == {"error": "bad_request", "message": "malformed JSON body"}
    r = client.post("/api/tasks/999/comments", json={"body": "x"}, headers=ha)
    assert r.status_code == 404 and r.json == {"error": "not_found", "message": "task 999 not found"}
    assert client.get("/api/tasks/999/comments", headers=ha).status_code == 404
    c = client.post(url, json={"body": "ok"}, headers=ha).json
    r = client.patch(f"/api/comments/{c['id']}", json={"body": ""}, headers=ha)
    assert r.json == {"error": "validation_error", "field": "body", "message": "body must not be empty"}
    r = client.patch(f"/api/comments/{c['id']}", json={}, headers=ha)
    assert r.json["message"] == "body is required"
    # unknown fields are ignored
    r = client.post(url, json={"body": "b", "author_id": 999, "id": 1}, headers=ha)
    assert r.status_code == 201 and r.json["author_id"] == a["id"]


def test_comment_list_pagination_order(client, setup):
    a, ha, b, hb, t = setup
    ids = [client.post(f"/api/tasks/{t['id']}/comments", json={"body": f"c{i}"}, headers=ha).json["id"]
           for i in range(5)]
    r = client.get(f"/api/tasks/{t['id']}/comments?page=2&per_page=2", headers=hb).json
    assert [c["id"] for c in r["items"]] == ids[2:4] and r["total"] == 5


def test_task_delete_emits_comment_deletes(client, api, setup):
    a, ha, b, hb, t = setup
    c = client.post(f"/api/tasks/{t['id']}/comments", json={"body": "x"}, headers=hb).json
    assert client.delete(f"/api/tasks/{t['id']}", headers=ha).status_code == 204
    evs = [e for e in api.events() if e["entity"] == "comment"]
    assert [(e["op"], e["payload"]) for e in evs] == [("create", c), ("delete", {"id": c["id"]})]
