import time

import jwt


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok"}


def test_register_returns_user_without_hash(client):
    r = client.post("/api/auth/register", json={"username": "alice", "email": "Alice@Example.com",
                                                "password": "secret123", "full_name": "Alice A"})
    assert r.status_code == 201
    u = r.json
    assert set(u) == {"id", "username", "email", "full_name", "created_at", "updated_at"}
    assert u["username"] == "alice" and u["email"] == "alice@example.com" and u["full_name"] == "Alice A"
    assert u["created_at"].endswith(" GMT") and u["created_at"] == u["updated_at"]
    assert b"password" not in r.data


def test_register_validation_and_duplicates(client, api):
    api.user("bob")
    cases = [
        ({"email": "x@y.z", "password": "password1"}, "username", "username is required"),
        ({"username": 5, "email": "x@y.z", "password": "password1"}, "username", "username must be a string"),
        ({"username": "ab", "email": "x@y.z", "password": "password1"}, "username",
         "username must be at least 3 characters"),
        ({"username": "bad name", "email": "x@y.z", "password": "password1"}, "username", None),
        ({"username": "carl", "email": "nope", "password": "password1"}, "email", None),
        ({"username": "carl", "email": "c@y.z", "password": "short"}, "password",
         "password must be at least 8 characters"),
    ]
    for body, field, msg in cases:
        r = client.post("/api/auth/register", json=body)
        assert r.status_code == 400, body
        assert r.json["error"] == "validation_error" and r.json["field"] == field
        if msg:
            assert r.json["message"] == msg
    r = client.post("/api/auth/register", json={"username": "bob", "email": "b2@y.z", "password": "password1"})
    assert r.status_code == 409 and r.json == {"error": "conflict", "field": "username",
                                               "message": "username 'bob' is already taken"}
    r = client.post("/api/auth/register", json={"username": "bob2", "email": "BOB@example.com",
                                                "password": "password1"})
    assert r.status_code == 409 and r.json["field"] == "email"


def test_malformed_json(client):
    r = client.post("/api/auth/register", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.json == {"error": "bad_request", "message": "malformed JSON body"}
    r = client.post("/api/auth/register", json=[1, 2])
    assert r.status_code == 400 and r.json == {"error": "bad_request", "message": "JSON body must be an object"}


def test_login_token_claims(app, client, api):
    u, _ = api.user("dave")
    r = client.post("/api/auth/login", json={"username": "dave", "password": "password1"})
    assert r.status_code == 200 and set(r.json) == {"token"}
    claims = jwt.decode(r.json["token"], app.config["JWT_SECRET"], algorithms=["HS256"])
    assert claims["sub"] == str(u["id"]) and claims["username"] == "dave"
    assert claims["exp"] > claims["iat"] >= int(time.time()) - 5
    r = client.post("/api/auth/login", json={"username": "dave", "password": "wrong-pass"})
    assert r.status_code == 401 and r.json == {"error": "unauthorized", "message": "invalid username or password"}
    r = client.post("/api/auth/login", json={"username": "nobody", "password": "wrong-pass"})
    assert r.status_code == 401


def test_auth_required(app, client, api):
    u, h = api.user()
    r = client.get("/api/users")
    assert r.status_code == 401 and r.json == {"error": "unauthorized", "message": "missing bearer token"}
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = client.get("/api/users", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401 and r.json["message"] == "invalid token"
    r = client.get("/api/users", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json["message"] == "missing bearer token"
    expired = jwt.encode({"sub": str(u["id"]), "username": u["username"], "iat": 1, "exp": 2},
                         app.config["JWT_SECRET"], algorithm="HS256")
    r = client.get("/api/users", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json["message"] == "token expired"
    wrong = jwt.encode({"sub": str(u["id"]), "iat": int(time.time()), "exp": int(time.time()) + 60},
                       "another-secret-another-secret-another", algorithm="HS256")
    r = client.get("/api/users", headers={"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 401
    ghost = jwt.encode({"sub": "999", "iat": int(time.time()), "exp": int(time.time()) + 60},
                       app.config["JWT_SECRET"], algorithm="HS256")
    assert client.get("/api/users", headers={"Authorization": f"Bearer {ghost}"}).status_code == 401
    for path in ["/api/projects", "/api/tasks/1", "/api/comments/1", "/api/activity",
                 "/api/attachments/1", "/api/reports/projects/1", "/api/reports/users/1/workload"]:
        assert client.get(path).status_code == 401, path


def test_users_get_list_and_pagination(client, api):
    users = [api.user(f"pager{i}") for i in range(5)]
    h = users[0][1]
    r = client.get("/api/users?per_page=2&page=2", headers=h)
    assert r.status_code == 200
    assert r.json["page"] == 2 and r.json["per_page"] == 2 and r.json["total"] == 5
    assert [u["username"] for u in r.json["items"]] == ["pager2", "pager3"]
    r = client.get("/api/users?per_page=1000", headers=h)
    assert r.json["per_page"] == 100
    r = client.get("/api/users?page=0", headers=h)
    assert r.status_code == 400 and r.json == {"error": "validation_error", "field": "page",
                                               "message": "page must be >= 1"}
    r = client.get("/api/users?per_page=x", headers=h)
    assert r.status_code == 400 and r.json["field"] == "per_page"
    r = client.get("/api/users?page=9", headers=h)
    assert r.json["items"] == [] and r.json["total"] == 5
    uid = users[1][0]["id"]
    r = client.get(f"/api/users/{uid}", headers=h)
    assert r.status_code == 200 and r.json == users[1][0]
    r = client.get("/api/users/9999", headers=h)
    assert r.status_code == 404 and r.json == {"error": "not_found", "message": "user 9999 not found"}


def test_user_patch_rules(client, api):
    (a, ha), (b, hb) = api.user("patcha"), api.user("patchb")
    r = client.patch(f"/api/users/{b['id']}", json={"full_name": "X"}, headers=ha)
    assert r.status_code == 403 and r.json == {"error": "forbidden",
                                               "message": "you can only modify your own profile"}
    assert client.patch("/api/users/999", json={}, headers=ha).status_code == 404
    r = client.patch(f"/api/users/{a['id']}", json={"full_name": "Patch A", "email": "NEW@x.io"}, headers=ha)
    assert r.status_code == 200 and r.json["full_name"] == "Patch A" and r.json["email"] == "new@x.io"
    assert r.json["username"] == "patcha"
    r = client.patch(f"/api/users/{a['id']}", json={"email": b["email"]}, headers=ha)
    assert r.status_code == 409 and r.json["field"] == "email"
    r = client.patch(f"/api/users/{a['id']}", json={"full_name": 3}, headers=ha)
    assert r.status_code == 400 and r.json["field"] == "full_name"
    r = client.patch(f"/api/users/{a['id']}", json={"password": "newpassword"}, headers=ha)
    assert r.status_code == 200
    assert client.post("/api/auth/login", json={"username": "patcha", "password": "newpassword"}).status_code == 200


def test_unknown_url_and_wrong_method_are_flask_html(client, api):
    _, h = api.user()
    r = client.get("/api/nope", headers=h)
    assert r.status_code == 404 and r.content_type == "text/html; charset=utf-8"
    assert b"<title>404 Not Found</title>" in r.data
    r = client.get("/api/users/abc", headers=h)
    assert r.status_code == 404 and r.content_type.startswith("text/html")
    r = client.put("/api/users/1", headers=h)
    assert r.status_code == 405 and r.content_type.startswith("text/html")
    assert "PATCH" in r.headers["Allow"]
