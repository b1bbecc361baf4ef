"""Real processes: gunicorn over HTTP, and the SMTP sink capturing mail."""
import email
import os
import subprocess
import sys
import time

import pytest

from helpers import ROOT, free_port, http, start_sink, stop, wait_for_files, wait_http
from taskapp import create_app


@pytest.fixture
def sink(tmp_path):
    out = tmp_path / "mail"
    proc, port = start_sink(out)
    yield port, str(out)
    stop(proc)


def test_gunicorn_real_http(tmp_path, sink):
    smtp_port, mail_dir = sink
    port = free_port()
    env = dict(os.environ, TASKAPP_DB=str(tmp_path / "g.db"), TASKAPP_DATA_DIR=str(tmp_path / "data"),
               TASKAPP_JWT_SECRET="gunicorn-test-secret-gunicorn-test-secret",
               TASKAPP_SMTP_HOST="127.0.0.1", TASKAPP_SMTP_PORT=str(smtp_port), TASKAPP_NOTIFY_POLL="0.2",
               TASKAPP_PYTHON=sys.executable)
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([os.path.join(ROOT, "run.sh"), str(port)], cwd=str(tmp_path), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/healthz")
        except TimeoutError:
            raise AssertionError((tmp_path / "gunicorn.log").read_text())
        st, hd, body = http("GET", base + "/healthz")
        assert st == 200 and body == b'{"status":"ok"}\n' and hd["Content-Type"] == "application/json"
        for name in ("gone", "gtwo"):
            st, _, _ = http("POST", base + "/api/auth/register",
                            {"username": name, "email": f"{name}@example.com", "password": "password1"})
            assert st == 201
        import json
        tok = json.loads(http("POST", base + "/api/auth/login", {"username": "gone", "password": "password1"})[2])["token"]
        st, _, body = http("GET", base + "/api/users")
        assert st == 401 and json.loads(body)["error"] == "unauthorized"
        st, _, body = http("POST", base + "/api/projects", {"name": "G"}, tok)
        pid = json.loads(body)["id"]
        assert http("POST", base + f"/api/projects/{pid}/members", {"user_id": 2}, tok)[0] == 201
        st, _, body = http("POST", base + f"/api/projects/{pid}/tasks", {"title": "Ship it", "assignee_id": 2}, tok)
        assert st == 201
        tid = json.loads(body)["id"]
        st, _, body = http("POST", base + f"/api/tasks/{tid}/comments", {"body": "go"}, tok)
        assert st == 201
        st, hd, body = http("GET", base + "/nope")
        assert st == 404 and hd["Content-Type"] == "text/html; charset=utf-8"
        st, _, body = http("GET", base + "/internal/events?after=0")
        evs = json.loads(body)["events"]
        assert [e["entity"] for e in evs][-2:] == ["task", "comment"]
        # the assignment mail and the new-comment mail are each sent exactly once even with
        # 2 workers polling
        files = wait_for_files(mail_dir, 2)
        time.sleep(0.6)
        files = wait_for_files(mail_dir, 2)
        assert len(files) == 2
        subjects = set()
        for name in files:
            with open(os.path.join(mail_dir, name), "rb") as f:
                msg = email.message_from_bytes(f.read())
            assert msg["To"] == "gtwo@example.com"
            subjects.add(msg["Subject"])
        assert subjects == {f"[taskapp] You were assigned task #{tid}: Ship it",
                            f"[taskapp] New comment on task #{tid}: Ship it"}
    finally:
        stop(proc)
        log.close()


def test_task_assignment_mail_captured_by_sink(tmp_path, sink):
    smtp_port, mail_dir = sink
    app = create_app({"DB_PATH": str(tmp_path / "m.db"), "DATA_DIR": str(tmp_path / "d"),
                      "JWT_SECRET": "mail-test-secret-mail-test-secret-123", "SMTP_HOST": "127.0.0.1",
                      "SMTP_PORT": smtp_port, "NOTIFY_POLL_SECONDS": 0.1, "NOTIFY_WORKER": True})
    try:
        c = app.test_client()
        for name in ("mailer", "mailee"):
            assert c.post("/api/auth/register", json={"username": name, "email": f"{name}@example.com",
                                                      "password": "password1"}).status_code == 201
        tok = c.post("/api/auth/login", json={"username": "mailer", "password": "password1"}).json["token"]
        h = {"Authorization": f"Bearer {tok}"}
        pid = c.post("/api/projects", json={"name": "M"}, headers=h).json["id"]
        c.post(f"/api/projects/{pid}/members", json={"user_id": 2}, headers=h)
        t = c.post(f"/api/projects/{pid}/tasks", json={"title": "Mail me"}, headers=h).json
        assert wait_for_files(mail_dir, 1, timeout=0.5) == []  # unassigned: no mail
        c.patch(f"/api/tasks/{t['id']}", json={"assignee_id": 2}, headers=h)
        files = wait_for_files(mail_dir, 1)
        assert len(files) == 1
        with open(os.path.join(mail_dir, files[0]), "rb") as f:
            msg = email.message_from_bytes(f.read())
        assert msg["To"] == "mailee@example.com"
        assert msg["Subject"] == f"[taskapp] You were assigned task #{t['id']}: Mail me"
        import sqlite3
        conn = sqlite3.connect(app.config["DB_PATH"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = conn.execute("SELECT status FROM notifications").fetchall()
            if st == [("sent",)]:
                break
            time.sleep(0.1)
        assert st == [("sent",)]
        conn.close()
    finally:
        app.extensions["taskapp_worker"].stop()
        app.extensions["taskapp_worker"].join(5)
