import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from werkzeug.http import http_date
from werkzeug.serving import WSGIRequestHandler, make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} never opened")


def wait_http(url, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} never answered 200")


def start_sink(out_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "taskapp.smtp_sink", "--port", str(port), "--out", str(out_dir)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
    except Exception:
        proc.kill()
        raise
    return proc, port


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_files(d, n, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(f for f in os.listdir(d) if f.endswith(".eml")) if os.path.isdir(d) else []
        if len(files) >= n:
            return files
        time.sleep(0.1)
    return sorted(f for f in os.listdir(d) if f.endswith(".eml")) if os.path.isdir(d) else []


def http(method, url, body=None, token=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait_until(check, timeout=15.0, what="condition"):
    """Poll `check()` until it returns a truthy value (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class FeedServer:
    """A real HTTP server (werkzeug, own thread, loopback) serving recorded events the way the
    comments service serves its feed: GET /internal/events?after=&limit= with X-Internal-Token.

    `events` can grow while it runs; `status` other than 200 makes it answer that error; `raw`
    (bytes) is answered as is;
    `ignore_after_once` serves the next request from the start of the feed (a replay).
    Every request is recorded as (after, limit, token, user_agent)."""

    def __init__(self, token=None, port=0):
        from flask import Flask, jsonify, request
        self.events, self.requests, self.token = [], [], token
        self.status, self.ignore_after_once, self.raw = 200, False, None
        self.lock = threading.Lock()
        app = Flask("feed-server")

        @app.get("/internal/events")
        def events():
            after, limit = int(request.args.get("after", 0)), int(request.args.get("limit", 100))
            with self.lock:
                self.requests.append((after, limit, request.headers.get("X-Internal-Token"),
                                      request.headers.get("User-Agent")))
                if self.status != 200:
                    return jsonify({"error": "unavailable", "message": "down for the test"}), self.status
                if self.token and request.headers.get("X-Internal-Token") != self.token:
                    return jsonify({"error": "unauthorized", "message": "bad token"}), 401
                if self.raw is not None:
                    return self.raw, 200, {"Content-Type": "application/json"}
                if self.ignore_after_once:
                    self.ignore_after_once, after = False, 0
                page = [e for e in self.events if e["id"] > after][:limit]
            return jsonify({"events": page, "next_after": page[-1]["id"] if page else after})

        self.server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_QuietHandler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, entity, entity_id, op, payload):
        with self.lock:
            eid = (self.events[-1]["id"] if self.events else 0) + 1
            self.events.append({"id": eid, "entity": entity, "entity_id": entity_id, "op": op,
                                "payload": payload, "created_at": http_date(time.time())})
            return eid

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
