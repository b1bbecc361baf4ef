"""The consumer of the comments service's feed (issue 18), against a real HTTP server serving
recorded service events (helpers.FeedServer), and once under the real gunicorn."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from werkzeug.http import http_date

from helpers import ROOT, FeedServer, free_port, http, stop, wait_http, wait_until
from taskapp import create_app

TOKEN = "feed-s3cret"
IT = {"X-Internal-Token": TOKEN}
T0 = 1_790_000_000


def comment(cid, task_id, author_id, body, created=T0, updated=None):
    """A comment exactly as the service's API (and so its feed) shows it."""
    return {"id": cid, "task_id": task_id, "author_id": author_id, "body": body,
            "created_at": http_date(created), "updated_at": http_date(updated or created)}


@pytest.fixture
def feed():
    f = FeedServer(token=TOKEN)
    yield f
    f.stop()


def start_monolith(tmp_path, service_url, **config):
    app = create_app({"DB_PATH": str(tmp_path / "mono.db"), "DATA_DIR": str(tmp_path / "data"),
                      "JWT_SECRET": "feed-test-secret-feed-test-secret-123", "NOTIFY_WORKER": False,
                      "INTERNAL_TOKEN": TOKEN, "COMMENTS_SERVICE_URL": service_url,
                      "CONSUMER_POLL_SECONDS": 0.02, "CONSUMER_MAX_BACKOFF_SECONDS": 0.2, "TESTING": True,
                      **config})
    return app


@pytest.fixture
def mono(tmp_path, feed):
    app = start_monolith(tmp_path, feed.url)
    yield app
    stop_consumer(app)


def stop_consumer(app):
    c = app.extensions["taskapp_consumer"]
    c.stop()
    c.join(5)
    assert not c.is_alive()


class World:
    """Users, a project and a task made through the monolith's API, then comments handed over."""

    def __init__(self, app):
        self.app = app
        self.c = app.test_client()
        self.users = [self._user(f"world{i}") for i in range(3)]
        (a, ha), (b, _), _ = self.users
        self.h = ha
        self.project = self.c.post("/api/projects", json={"name": "P"}, headers=ha).json
        assert self.c.post(f"/api/projects/{self.project['id']}/members", json={"user_id": b["id"]},
                           headers=ha).status_code == 201
        self.task = self._task("T", assignee_id=b["id"])

    def _user(self, name):
        r = self.c.post("/api/auth/register", json={"username": name, "email": f"{name}@example.com",
                                                    "password": "password1"})
        tok = self.c.post("/api/auth/login", json={"username": name, "password": "password1"}).json["token"]
        return r.json, {"Authorization": f"Bearer {tok}"}

    def _task(self, title, **extra):
        r = self.c.post(f"/api/projects/{self.project['id']}/tasks", json={"title": title, **extra}, headers=self.h)
        assert r.status_code == 201
        return r.json

    def hand_over(self):
        r = self.c.post("/internal/ownership/comments", json={"owner": "comments"}, headers=IT)
        assert r.status_code == 200, r.json
        return r.json

    def state(self):
        return self.c.get("/internal/ownership", headers=IT).json

    def applied(self, event_id):
        return wait_until(lambda: self.state()["applied_event_id"] >= event_id, what=f"event {event_id} applied")

    def rows(self, sql, params=()):
        conn = sqlite3.connect(self.app.config["DB_PATH"])
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def own_events(self, after=0):
        return self.c.get(f"/internal/events?after={after}&limit=1000", headers=IT).json["events"]

    def activity(self):
        items = self.c.get(f"/api/activity?project={self.project['id']}&per_page=100", headers=self.h).json["items"]
        return [(i["action"], i["entity_id"], i["actor_id"], i["details"]) for i in items
                if i["entity_type"] == "comment"]

    def comment_mails(self):
        return self.rows("SELECT dedup_key, recipient_id FROM notifications WHERE kind = 'comment_added'"
                         " ORDER BY id")


def test_consumer_applies_the_service_feed_once_even_when_served_twice(mono, feed):
    w = World(mono)
    (a, _), (b, _), (c, _) = w.users
    t = w.task["id"]
    assert w.hand_over()["high_water"] == 0
    mono_feed_end = w.own_events()[-1]["id"]
    c1 = comment(1, t, a["id"], "first")
    c1_edited = comment(1, t, a["id"], "edited", updated=T0 + 60)
    c3 = comment(3, t, c["id"], "third", created=T0 + 120)
    feed.add("comment", 1, "create", c1)
    feed.add("comment", 2, "create", comment(2, t, c["id"], "second"))
    feed.add("comment", 1, "update", c1_edited)
    feed.add("comment", 2, "delete", {"id": 2, "task_id": t})
    last = feed.add("comment", 3, "create", c3)
    w.applied(last)

    assert w.c.get(f"/api/tasks/{t}/comments", headers=w.h).json["items"] == [c1_edited, c3]
    assert w.c.get("/api/comments/2", headers=w.h).status_code == 404
    d = {"task_id": t}
    assert w.activity() == [("comment.create", 1, a["id"], d), ("comment.create", 2, c["id"], d),
                            ("comment.update", 1, a["id"], d), ("comment.delete", 2, c["id"], d),
                            ("comment.create", 3, c["id"], d)]
    # one mail per created comment, to the task's assignee
    assert w.comment_mails() == [(f"comment_added:{i}", b["id"]) for i in (1, 2, 3)]
    assert w.c.get(f"/api/reports/projects/{w.project['id']}", headers=w.h).json["total_comments"] == 2
    # nothing echoed into the monolith's own feed (the service would read it back)
    assert w.own_events(mono_feed_end) == []
    assert {r[2] for r in feed.requests} == {TOKEN}

    # the service serves the whole feed again, then one new event
    feed.ignore_after_once = True
    wait_until(lambda: not feed.ignore_after_once, what="the replayed page served")
    last = feed.add("comment", 4, "create", comment(4, t, a["id"], "fourth"))
    w.applied(last)
    assert [x["id"] for x in w.c.get(f"/api/tasks/{t}/comments", headers=w.h).json["items"]] == [1, 3, 4]
    assert w.comment_mails() == [(f"comment_added:{i}", b["id"]) for i in (1, 2, 3, 4)]
    assert len(w.activity()) == 6
    assert w.own_events(mono_feed_end) == []


def test_reapplying_the_whole_feed_from_a_reset_cursor_sends_no_mail_twice(mono, feed):
    w = World(mono)
    t = w.task["id"]
    w.hand_over()
    a = w.users[0][0]["id"]
    feed.add("comment", 1, "create", comment(1, t, a, "one"))
    feed.add("comment", 2, "create", comment(2, t, a, "two"))
    last = feed.add("comment", 2, "delete", {"id": 2, "task_id": t})
    w.applied(last)
    conn = sqlite3.connect(mono.config["DB_PATH"])
    conn.execute("UPDATE feed_cursors SET applied_event_id = 0")  # an operator's re-sync
    conn.commit()
    conn.close()
    last = feed.add("comment", 3, "create", comment(3, t, a, "three"))
    w.applied(last)
    assert w.rows("SELECT id, body FROM comments ORDER BY id") == [(1, "one"), (3, "three")]
    assert [k for k, _ in w.comment_mails()] == ["comment_added:1", "comment_added:2", "comment_added:3"]
    # a replayed event that finds its change already here logs nothing
    assert [x[0] for x in w.activity() if x[1] == 1] == ["comment.create"]


def test_hand_back_restores_comment_writes_with_ids_above_high_water(mono, feed):
    w = World(mono)
    (a, ha), _, _ = w.users
    t = w.task["id"]
    mine = w.c.post(f"/api/tasks/{t}/comments", json={"body": "mine"}, headers=ha).json
    assert w.hand_over() == {"feature": "comments", "owner": "comments", "epoch": 2, "high_water": mine["id"]}
    assert w.c.post(f"/api/tasks/{t}/comments", json={"body": "x"}, headers=ha).status_code == 421
    theirs = comment(mine["id"] + 1, t, a["id"], "from the service")
    feed.add("comment", theirs["id"], "create", theirs)
    feed.add("comment", mine["id"], "update", {**mine, "body": "mine, edited on the service",
                                                 "updated_at": http_date(T0 + 5)})
    last = feed.add("ownership", 0, "handover", {"feature": "comments", "owner": "legacy", "epoch": 3,
                                                 "high_water": 900})
    w.applied(last)
    assert w.state()["features"] == {"comments": {"owner": "legacy", "epoch": 3, "high_water": 900}}
    end = w.own_events()[-1]["id"]
    r = w.c.post(f"/api/tasks/{t}/comments", json={"body": "back home"}, headers=ha)
    assert r.status_code == 201 and r.json["id"] == 901
    assert w.c.patch(f"/api/comments/{mine['id']}", json={"body": "v3"}, headers=ha).status_code == 200
    # the monolith's own comment writes go into its feed again (the service applies them)
    assert [(e["entity"], e["entity_id"], e["op"]) for e in w.own_events(end)] == [
        ("comment", 901, "create"), ("comment", mine["id"], "update")]
    # a replayed older ownership event changes nothing
    last = feed.add("ownership", 0, "handover", {"feature": "comments", "owner": "comments", "epoch": 2,
                                                 "high_water": 1})
    w.applied(last)
    assert w.state()["features"]["comments"] == {"owner": "legacy", "epoch": 3, "high_water": 900}
    assert w.c.post(f"/api/tasks/{t}/comments", json={"body": "still mine"}, headers=ha).json["id"] == 902


def test_deleting_a_task_after_the_handover_removes_its_comments_and_the_service_cascade_is_a_no_op(mono, feed):
    w = World(mono)
    (a, ha), _, _ = w.users
    doomed, other = w.task["id"], w._task("kept")["id"]
    w.hand_over()
    feed.add("comment", 1, "create", comment(1, doomed, a["id"], "one"))
    feed.add("comment", 2, "create", comment(2, doomed, a["id"], "two"))
    last = feed.add("comment", 3, "create", comment(3, other, a["id"], "three"))
    w.applied(last)
    end = w.own_events()[-1]["id"]
    assert w.c.delete(f"/api/tasks/{doomed}", headers=ha).status_code == 204
    assert w.c.get("/api/comments/1", headers=ha).status_code == 404
    assert w.c.get(f"/api/tasks/{doomed}/comments", headers=ha).status_code == 404
    assert [(e["entity"], e["entity_id"], e["op"]) for e in w.own_events(end)] == [
        ("comment", 1, "delete"), ("comment", 2, "delete"), ("task", doomed, "delete")]
    activity_before = w.activity()
    # the service applies the task delete and publishes its own deletes; a create it took just
    # before it saw the delete arrives too
    feed.add("comment", 1, "delete", {"id": 1, "task_id": doomed})
    feed.add("comment", 2, "delete", {"id": 2, "task_id": doomed})
    last = feed.add("comment", 4, "create", comment(4, doomed, a["id"], "raced"))
    w.applied(last)
    assert w.state()["consumer"]["last_error"] is None
    assert w.rows("SELECT id FROM comments") == [(3,)]
    assert w.activity() == activity_before
    assert [k for k, _ in w.comment_mails()] == ["comment_added:1", "comment_added:2", "comment_added:3"]


def test_consumer_survives_the_service_being_down_backs_off_and_resumes_from_its_cursor(tmp_path):
    port = free_port()  # nothing listens here yet: the service is down
    app = start_monolith(tmp_path, f"http://127.0.0.1:{port}")
    feed = None
    try:
        w = World(app)
        a = w.users[0][0]["id"]
        t = w.task["id"]
        w.hand_over()
        down = wait_until(lambda: w.state()["consumer"]["last_error"], what="the error recorded")
        assert f"127.0.0.1:{port}/internal/events?after=0" in down and "refused" in down.lower()
        assert w.state()["consumer"]["last_error_at"] is not None
        # API requests are not slowed by it
        assert w.c.get(f"/api/tasks/{t}/comments", headers=w.h).status_code == 200

        feed = FeedServer(token=TOKEN, port=port)
        feed.add("comment", 1, "create", comment(1, t, a, "one"))
        last = feed.add("comment", 2, "create", comment(2, t, a, "two"))
        w.applied(last)
        wait_until(lambda: w.state()["consumer"]["last_error"] is None, what="the error cleared")

        # an error answer: backed off (poll every 0.02 s, back-off up to 0.2 s)
        feed.status = 503
        wait_until(lambda: "answered 503" in (w.state()["consumer"]["last_error"] or ""), what="503 recorded")
        n0, t0 = len(feed.requests), time.monotonic()
        time.sleep(1.0)
        rate = (len(feed.requests) - n0) / (time.monotonic() - t0)
        assert rate < 15, f"{rate:.1f} requests/s while the service fails: no back-off"

        # down again, a new process of the service with more events: resumes after its cursor
        feed.stop()
        feed = FeedServer(token=TOKEN, port=port)
        for i in (1, 2):  # already applied: served again they would fail (no task_id)
            feed.add("comment", i, "create", {"id": i})
        last = feed.add("comment", 3, "create", comment(3, t, a, "three"))
        w.applied(last)
        assert {r[0] for r in feed.requests} <= {2, 3}
        assert w.rows("SELECT id FROM comments ORDER BY id") == [(1,), (2,), (3,)]
    finally:
        stop_consumer(app)
        if feed:
            feed.stop()


def test_an_event_that_cannot_be_applied_stops_the_consumer_there_until_it_can(mono, feed):
    w = World(mono)
    a, t = w.users[0][0]["id"], w.task["id"]
    w.hand_over()
    feed.add("comment", 1, "create", comment(1, t, a, "one"))
    bad = feed.add("comment", 2, "create", {"id": 2, "body": "no task"})
    feed.add("comment", 3, "create", comment(3, t, a, "three"))
    err = wait_until(lambda: w.state()["consumer"]["last_error"], what="the error recorded")
    assert err == f"event {bad} (comment/create) cannot be applied: payload.task_id must be an integer"
    assert w.state()["applied_event_id"] == bad - 1  # the one before it is applied, nothing after it
    assert w.rows("SELECT id FROM comments") == [(1,)]
    feed.events[1]["payload"] = comment(2, t, a, "two")  # the service fixed its feed
    w.applied(3)
    assert w.rows("SELECT id FROM comments ORDER BY id") == [(1,), (2,), (3,)]
    wait_until(lambda: w.state()["consumer"]["last_error"] is None, what="the error cleared")


def test_a_page_that_is_not_a_change_feed_is_recorded_as_an_error(mono, feed):
    w = World(mono)
    feed.raw = b"<html>502 Bad Gateway</html>"
    err = wait_until(lambda: w.state()["consumer"]["last_error"], what="the error recorded")
    assert err.startswith(f"GET {feed.url}/internal/events?after=0&limit=500: not a change feed page")
    feed.raw = b'{"events": [{"id": 1, "entity": "comment"}], "next_after": 1}'
    wait_until(lambda: "entity_id must be int" in w.state()["consumer"]["last_error"], what="shape error")
    feed.raw = None
    w.hand_over()
    last = feed.add("comment", 1, "create", comment(1, w.task["id"], w.users[0][0]["id"], "one"))
    w.applied(last)
    wait_until(lambda: w.state()["consumer"]["last_error"] is None, what="the error cleared")


def test_one_consumer_per_monolith_under_gunicorn_and_another_worker_takes_over(tmp_path, feed):
    port = free_port()
    env = dict(os.environ, TASKAPP_DB=str(tmp_path / "g.db"), TASKAPP_DATA_DIR=str(tmp_path / "data"),
               TASKAPP_JWT_SECRET="gunicorn-feed-secret-gunicorn-feed-secret", TASKAPP_NOTIFY_WORKER="0",
               TASKAPP_INTERNAL_TOKEN=TOKEN, COMMENTS_SERVICE_URL=feed.url, TASKAPP_CONSUMER_POLL="0.05",
               TASKAPP_WORKERS="3", TASKAPP_PYTHON=sys.executable)
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([os.path.join(ROOT, "run.sh"), str(port)], cwd=str(tmp_path), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz")
        assert http("POST", base + "/api/auth/register", {"username": "guser", "email": "gu@example.com",
                                                          "password": "password1"})[0] == 201
        login = http("POST", base + "/api/auth/login", {"username": "guser", "password": "password1"})
        tok = json.loads(login[2])["token"]
        pid = json.loads(http("POST", base + "/api/projects", {"name": "G"}, tok)[2])["id"]
        tid = json.loads(http("POST", base + f"/api/projects/{pid}/tasks", {"title": "T"}, tok)[2])["id"]
        assert http("POST", base + "/internal/ownership/comments", {"owner": "comments"}, headers=IT)[0] == 200
        feed.add("comment", 1, "create", comment(1, tid, 1, "from the service"))
        wait_until(lambda: http("GET", base + "/api/comments/1", token=tok)[0] == 200, what="comment 1 applied")

        def pollers(since):
            return {r[3] for r in feed.requests[since:]}

        wait_until(lambda: len(feed.requests) >= 30, what="30 polls")
        first = pollers(0)
        assert len(first) == 1, first  # one consumer, though 3 workers run
        (agent,) = first
        assert agent.startswith("taskapp-feed-consumer/")
        os.kill(int(agent.rsplit("/", 1)[1]), signal.SIGKILL)  # gunicorn starts a new worker
        mark = len(feed.requests)
        wait_until(lambda: pollers(mark) - first, timeout=20, what="another worker polling")
        mark = len(feed.requests)
        wait_until(lambda: len(feed.requests) >= mark + 20, what="20 more polls")
        assert len(pollers(mark)) == 1
        feed.add("comment", 2, "create", comment(2, tid, 1, "after the takeover"))
        wait_until(lambda: http("GET", base + "/api/comments/2", token=tok)[0] == 200, what="comment 2 applied")
        st = json.loads(http("GET", base + "/internal/ownership", headers=IT)[2])
        assert st["applied_event_id"] == 2 and st["consumer"]["last_error"] is None
    except BaseException:
        log.flush()
        print((tmp_path / "gunicorn.log").read_text())
        raise
    finally:
        stop(proc)
        log.close()
