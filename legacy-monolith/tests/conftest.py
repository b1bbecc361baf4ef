import itertools
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from taskapp import create_app  # noqa: E402

_counter = itertools.count(1)


@pytest.fixture
def app(tmp_path):
    app = create_app({
        "DB_PATH": str(tmp_path / "test.db"),
        "DATA_DIR": str(tmp_path / "data"),
        "JWT_SECRET": "test-secret-test-secret-test-secret-1234",
        "NOTIFY_WORKER": False,
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "TESTING": True,
    })
    yield app


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """Tiny helper around the test client."""

    def __init__(self, client):
        self.c = client

    def user(self, name=None, password="password1", **extra):
        name = name or f"user{next(_counter)}"
        r = self.c.post("/api/auth/register", json={"username": name, "email": f"{name}@example.com",
                                                    "password": password, **extra})
        assert r.status_code == 201, r.data
        tok = self.c.post("/api/auth/login", json={"username": name, "password": password}).json["token"]
        return r.json, {"Authorization": f"Bearer {tok}"}

    def project(self, h, name="Proj", **extra):
        r = self.c.post("/api/projects", json={"name": name, **extra}, headers=h)
        assert r.status_code == 201, r.data
        return r.json

    def task(self, h, project_id, title="Task", **extra):
        r = self.c.post(f"/api/projects/{project_id}/tasks", json={"title": title, **extra}, headers=h)
        assert r.status_code == 201, r.data
        return r.json

    def add_member(self, h, project_id, user_id):
        r = self.c.post(f"/api/projects/{project_id}/members", json={"user_id": user_id}, headers=h)
        assert r.status_code == 201, r.data
        return r.json

    def events(self, after=0):
        return self.c.get(f"/internal/events?after={after}&limit=1000").json["events"]


@pytest.fixture
def api(client):
    return Api(client)
