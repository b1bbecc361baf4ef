#!/usr/bin/env python3
"""Walk `comments` from the monolith to the comments service, and back.

Runs against a running `make demo` (stdlib only, Python 3.11):

    make migrate                    # forward: reads, then writes, then the legacy routes go
    make migrate ARGS=--rollback    # back to where the walk started
    make migrate ARGS=--break       # a broken build of comments: the autopilot rolls it back

Forward, each step edits the comment routes of routes.yaml (between the
`# >>> comments` and `# <<< comments` markers), checks the new file with
`strangler check`, writes it over (the proxy reloads it live) and waits
until the proxy serves it; then prints what changed and the evidence:

  1. reads under the autopilot: the read routes get a `rollout:` plan
     (shadow -> 1% -> 50% -> 100%, short holds for the demo) and the walk
     watches `strangler rollout status` move by itself;
  2. writes handed over: once reads are at 100% and the service's copy has
     caught up with the monolith's feed, one call (POST
     /internal/ownership/comments on the monolith) hands the writes over;
  3. the write routes follow the owner (primary: comments, fallback: legacy
     for the 421 of a side that does not own comments);
  4. the legacy comment routes removed: one route per prefix on comments.

`--rollback` walks back: the per-method routes again, the writes handed back
(on the service), the write routes to the monolith, the reads back on the
monolith by the autopilot's abort, and routes.yaml as the walk found it.

Evidence at each step: the `strangler report` verdict for the read routes
(the shadow-diff log since the walk began), the 5xx answers and the 421 hops
(`strangler_misdirected_total`) from the admin /metrics, who owns comments
on each side and how far each has read the other's feed. Meanwhile the walk
sends its own traffic (comment reads under many sticky users, comment writes
of users 6-10 that send a 421 again, as a client should); the demo's
`tools/traffic.py` keeps running too. The summary: requests served, failed
(must be 0), writes moved (comment writes the service took).
"""
from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import http.client
import http.server
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "  # >>> comments"
END = "  # <<< comments"
READ_ROUTES = ("task-comments-read", "comments-read")
WRITE_ROUTES = ("task-comments-write", "comments-write")
FINAL_ROUTES = ("task-comments", "comments")
# Demo data: writes of this walk on tasks 1-500, reads on 2001-2500 (the
# shadow comparison never races this walk's own writes).
WRITE_TASKS = (1, 500)
READ_TASKS = (2001, 2500)
WRITERS = ("user0006", "user0007", "user0008", "user0009", "user0010")
BROKEN_PORT = 7012


def say(text=""):
    print(text, flush=True)


def step_title(n, text):
    say()
    say(f"== {n}. {text} " + "=" * max(0, 70 - len(text)))


def fail(text):
    say(f"!! {text}")
    raise SystemExit(1)


# ------------------------------------------------------------------ HTTP
def request(method, url, body=None, headers=None, timeout=10.0):
    """(status, parsed JSON or text) — HTTP errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class Demo:
    """Where the demo's parts listen, and the calls the walk makes to them."""

    def __init__(self, a):
        self.proxy, self.admin = a.proxy.rstrip("/"), a.admin.rstrip("/")
        self.monolith, self.service = a.monolith.rstrip("/"), a.comments.rstrip("/")
        self.token = a.internal_token
        self.config = os.path.abspath(a.config)
        self.strangler = a.strangler

    def internal(self, base, method, path, body=None):
        return request(method, base + path, body, {"X-Internal-Token": self.token})

    def ownership(self, base):
        status, doc = self.internal(base, "GET", "/internal/ownership")
        if status != 200:
            fail(f"GET {base}/internal/ownership: {status} {doc}")
        return doc

    def owner(self, base):
        c = self.ownership(base)["features"]["comments"]
        return c["owner"], c["epoch"]

    def feed_behind(self, writer, reader):
        """Events of `writer`'s feed that `reader` has not applied yet (up to 1000)."""
        cursor = self.ownership(reader)["applied_event_id"]
        status, doc = self.internal(writer, "GET", f"/internal/events?after={cursor}&limit=1000")
        if status != 200:
            fail(f"GET {writer}/internal/events: {status} {doc}")
        return cursor, len(doc["events"])

    def metrics(self):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            name, _, labels = series.partition("{")
            pairs = {}
            for part in labels.rstrip("}").split('",'):
                if "=" in part:
                    k, _, v = part.partition("=")
                    pairs[k.strip()] = v.strip().strip('"')
            out.append((name, pairs, float(value)))
        return out

    def rollout_status(self):
        out = self.cli("rollout", "status", "--config", self.config, "--format", "json")
        return {s["route"]: s for s in json.loads(out)}

    def report(self, route, since, min_samples, min_match):
        log = os.path.join(ROOT, "demo-data", "shadow-diffs.jsonl")
        if not os.path.exists(log):
            return None
        out = self.cli("report", log, "--format", "json", "--route", route, "--since", since,
                       "--min-samples", str(min_samples), "--min-match", str(min_match))
        routes = json.loads(out)["routes"]
        return routes[0] if routes else None

    def cli(self, *args):
        r = subprocess.run([self.strangler, *args], capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            fail(f"strangler {' '.join(args)}: exit {r.returncode}\n{r.stderr}{r.stdout}")
        return r.stdout


# ------------------------------------------------------------------ routes.yaml
def read_routes(plan):
    """The comment read routes under the autopilot: from legacy to comments."""
    text = (
        "  # Comment reads move by themselves: the autopilot walks each route through the\n"
        "  # plan's steps (`strangler rollout status`), rolling back to legacy on a failed gate.\n"
    )
    for name, prefix in zip(READ_ROUTES, ("/api/tasks/*/comments", "/api/comments")):
        text += (
            f"  - name: {name}\n"
            f"    prefix: {prefix}\n"
            "    methods: [GET, HEAD]\n"
            "    upstream: legacy             # where reads start, and where a rollback returns them\n"
            "    fallback: legacy             # a 421 from the service (its replica is behind) is asked again here\n"
            "    sticky: { header: X-User-Id }\n"
            "    shadow: { upstream: comments, timeout: 2s }\n"
            "    rollout:\n"
            "      to: comments\n"
            "      steps: [shadow, 1, 50, 100]\n"
            f"      hold: {plan['hold']}\n"
            f"      gates: {{ min_samples: {plan['min_samples']}, min_match: {plan['min_match']}, "
            f"min_requests: {plan['min_requests']} }}\n"
        )
    return text


def write_routes(owner):
    """The comment write routes: to `owner`, the other side as the 421 fallback."""
    other = "legacy" if owner == "comments" else "comments"
    text = (
        f"  # Comment writes go to {owner}, which owns them. The side that does not own\n"
        "  # them answers 421 untouched and the proxy sends the write once to the\n"
        "  # fallback, so replicas with an older or newer routes.yaml are safe too.\n"
    )
    for name, prefix, methods in zip(WRITE_ROUTES, ("/api/tasks/*/comments", "/api/comments"),
                                     ("[POST]", "[PATCH, DELETE]")):
        text += (f"  - name: {name}\n    prefix: {prefix}\n    methods: {methods}\n"
                 f"    upstream: {owner}\n    fallback: {other}\n")
    return text


def final_routes():
    """Comments live on the service; the monolith only answers what the service sends on (421)."""
    text = (
        "  # Comments live on the comments service, reads and writes. The monolith keeps a\n"
        "  # copy through the service's feed and answers only a 421: a read of a task created\n"
        "  # a moment ago (the service's replica is behind), or writes after a hand-back.\n"
    )
    for name, prefix in zip(FINAL_ROUTES, ("/api/tasks/*/comments", "/api/comments")):
        text += f"  - name: {name}\n    prefix: {prefix}\n    upstream: comments\n    fallback: legacy\n"
    return text


def split_block(text):
    lines = text.splitlines(keepends=True)
    starts = [i for i, l in enumerate(lines) if l.startswith(BEGIN)]
    ends = [i for i, l in enumerate(lines) if l.startswith(END)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        fail(f"routes.yaml: expected one '{BEGIN.strip()}' line and one '{END.strip()}' line after it")
    return "".join(lines[:starts[0] + 1]), "".join(lines[starts[0] + 1:ends[0]]), "".join(lines[ends[0]:])


def with_block(text, block):
    head, _, tail = split_block(text)
    return head + block + tail


def with_autopilot(text, line):
    """Sets (or, with None, removes) the top-level `autopilot:` line."""
    lines = [l for l in text.splitlines(keepends=True) if not l.startswith("autopilot:")]
    if line:
        at = next(i for i, l in enumerate(lines) if l.startswith("upstreams:"))
        lines.insert(at, line + "\n")
    return "".join(lines)


def with_comments_target(text, port):
    """Points the `comments` upstream at a port on loopback (a build deployed there)."""
    lines = text.splitlines(keepends=True)
    at = next(i for i, l in enumerate(lines) if l.strip().startswith("comments:") and l.startswith("  ") and
              not l.startswith("    "))
    for i in range(at + 1, len(lines)):
        if lines[i].strip().startswith("targets:"):
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            lines[i] = f'{indent}targets: ["http://127.0.0.1:{port}"]\n'
            return "".join(lines)
    fail("routes.yaml: the comments upstream has no targets line")


class Config:
    """routes.yaml, edited the way an operator would: checked, written over, watched until served."""

    def __init__(self, demo):
        self.demo = demo
        self.path = demo.config

    def text(self):
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def apply(self, new, why):
        old = self.text()
        if new == old:
            say(f"routes.yaml: unchanged ({why})")
            return
        check = os.path.join(os.path.dirname(self.path), ".routes.yaml.migrate")
        with open(check, "w", encoding="utf-8") as f:
            f.write(new)
        try:
            self.demo.cli("check", check)
            os.replace(check, self.path)  # one rename: the proxy never reads half a file
        finally:
            if os.path.exists(check):
                os.remove(check)
        say(f"routes.yaml: {why}")
        for line in difflib.unified_diff(old.splitlines(), new.splitlines(), "before", "after", n=1, lineterm=""):
            if line.startswith("@@"):
                say(f"    @@ line {line.split('+')[1].split(',')[0].split(' ')[0]}")
            elif not line.startswith(("---", "+++")):
                say(f"    {line}")
        want = hashlib.sha256(new.encode()).hexdigest()
        started = time.monotonic()
        while True:
            status, doc = request("GET", self.demo.admin + "/config")
            if status == 200 and doc.get("hash") == want:
                break
            if time.monotonic() - started > 20:
                fail(f"the proxy did not apply the new routes.yaml within 20 s (serving {doc.get('hash')})")
            time.sleep(0.1)
        say(f"routes.yaml: served by the proxy {time.monotonic() - started:.1f} s after the write (hash {want[:12]})")


# ------------------------------------------------------------------ traffic
class Traffic:
    """The walk's own traffic: comment reads under many sticky users, and
    comment writes (create, edit, delete their own) by users 6-10. A 421
    (neither side took the write: mid-handover) is sent again shortly, as a
    client of this API should; anything but the expected answer is a failure."""

    def __init__(self, base, reads_rps, writes_rps):
        self.base = base
        self.reads_rps, self.writes_rps = reads_rps, writes_rps
        self.lock = threading.Lock()
        self.by_status = Counter()
        self.served = self.failed = self.misdirected = 0
        self.errors = []
        self.stop_event = threading.Event()
        self.threads = []
        self.sessions = []
        self.read_comments = []

    def record(self, ok, status, what):
        with self.lock:
            self.by_status[str(status)] += 1
            if ok:
                self.served += 1
            else:
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append(f"{what}: {status}")

    def start(self):
        conn = Connection(self.base)
        for name in WRITERS:
            status, body = conn.call("POST", "/api/auth/login", None, {"username": name, "password": "password123"})
            if status != 200:
                fail(f"log in {name} through the proxy: {status} {body}")
            token = body["token"]
            payload = token.split(".")[1]
            uid = int(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])
            self.sessions.append((uid, token))
        # comment ids to read, on tasks this walk never writes to
        for tid in range(READ_TASKS[0], READ_TASKS[0] + 40):
            status, body = conn.call("GET", f"/api/tasks/{tid}/comments?per_page=100", self.sessions[0][1])
            if status == 200:
                self.read_comments += [c["id"] for c in body["items"]]
        for i in range(3):
            self.spawn(self.reader, i)
        for i, session in enumerate(self.sessions):
            self.spawn(self.writer, i, session)

    def spawn(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)

    def reader(self, i):
        rng = random.Random(1000 + i)
        conn = Connection(self.base)
        token = self.sessions[i % len(self.sessions)][1]
        pause = 3 / max(self.reads_rps, 0.1)
        while not self.stop_event.wait(pause):
            sticky = str(rng.randint(1, 1000))
            if rng.random() < 0.5 or not self.read_comments:
                path = f"/api/tasks/{rng.randint(*READ_TASKS)}/comments?per_page=20"
            else:
                path = f"/api/comments/{rng.choice(self.read_comments)}"
            try:
                status, _ = conn.call("GET", path, token, sticky=sticky)
            except OSError as e:
                self.record(False, type(e).__name__, f"GET {path}")
                continue
            self.record(status == 200, status, f"GET {path}")

    def writer(self, i, session):
        uid, token = session
        rng = random.Random(2000 + i)
        conn = Connection(self.base)
        mine = []
        pause = len(WRITERS) / max(self.writes_rps, 0.1)
        n = 0
        while not self.stop_event.wait(pause):
            n += 1
            if len(mine) < 2 or rng.random() < 0.5:
                task = rng.randint(*WRITE_TASKS)
                ok, body = self.write(conn, token, uid, "POST", f"/api/tasks/{task}/comments", 201,
                                      {"body": f"migrate walk: user {uid} says hello #{n}"})
                if ok:
                    mine.append(body["id"])
            elif rng.random() < 0.6:
                cid = rng.choice(mine)
                self.write(conn, token, uid, "PATCH", f"/api/comments/{cid}", 200, {"body": f"edited #{n}"})
            else:
                cid = mine.pop(rng.randrange(len(mine)))
                self.write(conn, token, uid, "DELETE", f"/api/comments/{cid}", 204, None)

    def write(self, conn, token, uid, method, path, expect, body):
        give_up = time.monotonic() + 15
        while True:
            try:
                status, answer = conn.call(method, path, token, body, sticky=str(uid))
            except OSError as e:
                self.record(False, type(e).__name__, f"{method} {path}")
                return False, None
            if status == 421 and time.monotonic() < give_up:
                with self.lock:
                    self.misdirected += 1
                time.sleep(0.2)
                continue
            self.record(status == expect, status, f"{method} {path} {answer}")
            return status == expect, answer


class Connection:
    """One keep-alive connection to the proxy."""

    def __init__(self, base):
        host_port = base.split("://", 1)[1]
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.conn = None

    def call(self, method, path, token, body=None, sticky=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if sticky:
            headers["X-User-Id"] = sticky
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode("utf-8", "replace")


def demo_traffic():
    """The latest summary tools/traffic.py (the demo's traffic) printed, if it runs."""
    try:
        with open(os.path.join(ROOT, "demo-data", "traffic.log"), encoding="utf-8") as f:
            lines = [l for l in f.read().splitlines() if l.startswith("{")]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


# ------------------------------------------------------------------ evidence
class Evidence:
    """What the walk looks at after each step."""

    def __init__(self, demo, since, plan):
        self.demo, self.since, self.plan = demo, since, plan
        self.last = self.counters()

    def counters(self):
        m = self.demo.metrics()
        five = sum(v for n, l, v in m if n == "strangler_requests_total" and l.get("status_class") == "5xx")
        hops = Counter()
        for n, l, v in m:
            if n == "strangler_misdirected_total":
                hops[(l.get("route"), l.get("from"), l.get("to"))] += v
        served = Counter()
        for n, l, v in m:
            if n == "strangler_requests_total" and l.get("route", "").startswith(("task-comments", "comments")):
                served[(l["route"], l["upstream"])] += v
        return {"5xx": five, "hops": hops, "served": served}

    def mark(self):
        """The next evidence counts from now."""
        self.last = self.counters()

    def show(self, traffic, reports=()):
        now = self.counters()
        five = now["5xx"] - self.last["5xx"]
        hops = {k: v - self.last["hops"].get(k, 0) for k, v in now["hops"].items()}
        hops = {k: v for k, v in hops.items() if v}
        served = {k: v - self.last["served"].get(k, 0) for k, v in now["served"].items()}
        served = {k: int(v) for k, v in served.items() if v}
        self.last = now
        say(f"evidence: 5xx answered by the proxy since the last step: {int(five)}")
        if hops:
            for (route, frm, to), v in sorted(hops.items()):
                say(f"evidence: 421 from {frm} on {route}, sent on to {to}: {int(v)}  (strangler_misdirected_total)")
        else:
            say("evidence: 421 hops since the last step: 0  (strangler_misdirected_total)")
        if served:
            say("evidence: comment requests by route and upstream since the last step: "
                + ", ".join(f"{r}->{u} {v}" for (r, u), v in sorted(served.items())))
        for route in reports:
            view = self.demo.report(route, self.since, self.plan["min_samples"], self.plan["min_match"])
            if view is None:
                say(f"evidence: strangler report {route}: no shadow records since the walk began")
                continue
            counts = view["counts"]
            verdict = "ready" if view["verdict"]["ready"] else "not ready: " + "; ".join(view["verdict"]["reasons"])
            say(f"evidence: strangler report --route {route} --since <walk start>: {counts['compared']} compared, "
                f"{counts['mismatch']} mismatched, verdict {verdict}")
        with traffic.lock:
            say(f"evidence: this walk's traffic so far: {traffic.served} served, {traffic.failed} failed, "
                f"{traffic.misdirected} writes answered 421 and sent again")
        return int(five)

    def ownership(self):
        mono, svc = self.demo.ownership(self.demo.monolith), self.demo.ownership(self.demo.service)
        m, s = mono["features"]["comments"], svc["features"]["comments"]
        _, svc_behind = self.demo.feed_behind(self.demo.monolith, self.demo.service)
        _, mono_behind = self.demo.feed_behind(self.demo.service, self.demo.monolith)
        say(f"evidence: the monolith says comments are owned by {m['owner']} (epoch {m['epoch']}), "
            f"the service says {s['owner']} (epoch {s['epoch']})")
        say(f"evidence: the service has read the monolith's feed to event {svc['applied_event_id']} "
            f"({svc_behind} behind); the monolith has read the service's to {mono['applied_event_id']} "
            f"({mono_behind} behind)")


def watch_rollouts(demo, timeout, expect_rollback=False, every=False):
    """Prints `strangler rollout status` each time a read route moves; returns the final statuses:
    when every read route is done (or stopped), or, expecting a rollback, when one (`every`: each) is
    rolled back."""
    shown = {}
    started = time.monotonic()
    while True:
        statuses = demo.rollout_status()
        for route in READ_ROUTES:
            s = statuses.get(route)
            if s is None:
                fail(f"strangler rollout status: no rollout on {route}")
            key = (json.dumps(s["step"]), s["status"])
            if shown.get(route) != key:
                shown[route] = key
                gates = ", ".join(f"{g['name']} {fmt(g['value'])}/{fmt(g['bound'])}"
                                  f"{'' if g['ok'] is None else (' ok' if g['ok'] else ' FAILED')}"
                                  for g in s["gates"]) or "no readings yet"
                say(f"rollout status: {route}: step {s['step']} ({s['percent']:g}% on {s['to']}), {s['status']}; "
                    f"gates: {gates}; next: {s['next']}")
        done = all(statuses[r]["status"] in ("done", "rolled_back", "paused") for r in READ_ROUTES)
        if expect_rollback:
            done = (all if every else any)(statuses[r]["status"] == "rolled_back" for r in READ_ROUTES)
        if done:
            return statuses
        if time.monotonic() - started > timeout:
            fail(f"the rollouts did not finish within {timeout:.0f} s: {statuses}")
        time.sleep(0.5)


def fmt(v):
    if v is None:
        return "-"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


# ------------------------------------------------------------------ broken build
class BrokenBuild:
    """A build of the comments service that changes one field of every answer:
    on 127.0.0.1:7012, relaying to the real service."""

    def __init__(self, upstream):
        target = upstream

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                req = urllib.request.Request(target + self.path, data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
                except urllib.error.HTTPError as e:
                    status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
                if ctype.startswith("application/json") and self.command == "GET" and status == 200:
                    raw = raw.replace(b'"updated_at":', b'"updatedAt":')  # the bug: a renamed field
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/octet-stream")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            do_GET = do_HEAD = do_POST = do_PATCH = do_DELETE = do_OPTIONS = relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", BROKEN_PORT), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ the walks
class Walk:
    def __init__(self, a):
        self.a = a
        self.demo = Demo(a)
        self.config = Config(self.demo)
        self.memo_path = os.path.join(ROOT, "demo-data", "migrate.json")
        self.plan = {"hold": a.hold, "min_samples": a.min_samples, "min_match": a.min_match,
                     "min_requests": a.min_requests}
        self.started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.t0 = time.monotonic()
        self.traffic = Traffic(self.demo.proxy, a.reads_rps, a.writes_rps)

    def memo(self):
        try:
            with open(self.memo_path, encoding="utf-8") as f:
                return json.load(f)
        except OSError:
            return None

    def save_memo(self, memo):
        with open(self.memo_path, "w", encoding="utf-8") as f:
            json.dump(memo, f, indent=2)

    def preflight(self):
        step_title(0, "the demo as the walk finds it")
        for what, url in (("proxy", self.demo.admin + "/readyz"), ("monolith", self.demo.monolith + "/healthz"),
                          ("comments", self.demo.service + "/healthz")):
            try:
                status, _ = request("GET", url, timeout=3)
            except OSError as e:
                fail(f"{what} is not up ({url}: {e}); start `make demo` first")
            if status != 200:
                fail(f"{what} is not ready ({url}: {status})")
        say(f"proxy {self.demo.proxy}, admin {self.demo.admin}, monolith {self.demo.monolith}, "
            f"comments {self.demo.service}: up")
        self.demo_traffic_at_start = demo_traffic()
        if self.demo_traffic_at_start:
            say(f"demo traffic (tools/traffic.py) is running: {self.demo_traffic_at_start['requests']} requests so far")
        self.feed_at_start = self.demo.ownership(self.demo.service)["published_event_id"]
        self.traffic.start()
        say(f"this walk's traffic: comment reads ~{self.a.reads_rps:g}/s under 1,000 sticky users, "
            f"comment writes ~{self.a.writes_rps:g}/s by {', '.join(WRITERS)}")
        self.evidence = Evidence(self.demo, self.started, self.plan)
        self.evidence.ownership()

    def forward(self):
        memo = self.memo()
        text = self.config.text()
        if memo is None or not memo.get("walking"):
            _, block, _ = split_block(text)
            memo = {"walking": True, "block_before": block,
                    "autopilot_before": next((l.rstrip("\n") for l in text.splitlines() if l.startswith("autopilot:")),
                                             None),
                    "state": f"./demo-data/rollouts-{int(time.time())}.json"}
            self.save_memo(memo)
        autopilot = f"autopilot: {{ state: {memo['state']}, interval: 1s }}"
        owner, _ = self.demo.owner(self.demo.monolith)

        step_title(1, "reads: shadow -> 1% -> 50% -> 100% under the autopilot")
        text = with_autopilot(with_block(text, read_routes(self.plan) + write_routes(owner)), autopilot)
        self.config.apply(text, "a rollout plan on the comment read routes (progress kept in "
                                f"{memo['state']}, evaluated every second)")
        statuses = watch_rollouts(self.demo, self.a.timeout)
        self.evidence.show(self.traffic, READ_ROUTES)
        if any(statuses[r]["status"] != "done" for r in READ_ROUTES):
            say("the autopilot stopped the walk (see the gates above): the writes stay where they are.")
            say("see `strangler rollout history ROUTE --config routes.yaml`; `make migrate ARGS=--rollback` "
                "puts routes.yaml back as it was")
            return False

        step_title(2, "writes: handed over to the comments service")
        owner, epoch = self.demo.owner(self.demo.monolith)
        if owner == "comments":
            say(f"the monolith already handed comments over (epoch {epoch})")
        else:
            self.wait_caught_up(self.demo.monolith, self.demo.service, "the service")
            status, answer = self.demo.internal(self.demo.monolith, "POST", "/internal/ownership/comments",
                                                {"owner": "comments"})
            if status != 200:
                fail(f"POST {self.demo.monolith}/internal/ownership/comments: {status} {answer}")
            asked = time.monotonic()
            say(f"POST /internal/ownership/comments {{\"owner\": \"comments\"}} on the monolith: {status} {answer}")
            self.wait_owner(self.demo.service, "comments", answer["epoch"], "the service", asked)
            time.sleep(self.a.settle)
        self.evidence.ownership()
        self.evidence.show(self.traffic)

        step_title(3, "writes: the routes follow the owner")
        text = with_block(self.config.text(), read_routes(self.plan) + write_routes("comments"))
        self.config.apply(text, "comment writes to comments first, legacy as the fallback for a 421")
        self.evidence.mark()
        time.sleep(self.a.settle)
        say("(counted from the swap: no write needs a hop any more)")
        self.evidence.show(self.traffic)

        step_title(4, "the legacy comment routes removed")
        text = with_block(self.config.text(), final_routes())
        self.config.apply(text, "one route per prefix on comments (the monolith only as the 421 fallback)")
        time.sleep(self.a.settle)
        self.evidence.ownership()
        self.evidence.show(self.traffic)
        return True

    def rollback(self):
        memo = self.memo()
        if memo is None or not memo.get("walking"):
            say("no walk to roll back: demo-data/migrate.json says routes.yaml is as the demo started")
            owner, _ = self.demo.owner(self.demo.monolith)
            if owner == "legacy":
                return True
            say("but the monolith says comments are owned by the service: handing them back")
        text = self.config.text()
        owner, epoch = self.demo.owner(self.demo.service)

        step_title(1, "the per-method comment routes back")
        if memo is not None and memo.get("walking"):
            write_owner = "comments" if owner == "comments" else "legacy"
            autopilot = f"autopilot: {{ state: {memo['state']}, interval: 1s }}"
            text = with_autopilot(with_block(text, read_routes(self.plan) + write_routes(write_owner)), autopilot)
            self.config.apply(text, "reads under their plan again (where the autopilot left them), "
                                    f"writes on {write_owner} with the other side as the 421 fallback")
        self.evidence.show(self.traffic)

        step_title(2, "writes: handed back to the monolith")
        if owner == "legacy":
            say(f"the service does not own comments (epoch {epoch}): nothing to hand back")
        else:
            self.wait_caught_up(self.demo.service, self.demo.monolith, "the monolith")
            status, answer = self.demo.internal(self.demo.service, "POST", "/internal/ownership/comments",
                                                {"owner": "legacy"})
            if status != 200:
                fail(f"POST {self.demo.service}/internal/ownership/comments: {status} {answer}")
            asked = time.monotonic()
            say(f"POST /internal/ownership/comments {{\"owner\": \"legacy\"}} on the service: {status} {answer}")
            self.wait_owner(self.demo.monolith, "legacy", answer["epoch"], "the monolith", asked)
            time.sleep(self.a.settle)
        self.evidence.ownership()
        self.evidence.show(self.traffic)

        if memo is None or not memo.get("walking"):
            return True

        step_title(3, "writes: the routes follow the owner")
        text = with_block(self.config.text(), read_routes(self.plan) + write_routes("legacy"))
        self.config.apply(text, "comment writes to legacy first, comments as the fallback for a 421")
        self.evidence.mark()
        time.sleep(self.a.settle)
        say("(counted from the swap: no write needs a hop any more)")
        self.evidence.show(self.traffic)

        step_title(4, "reads: back on the monolith (the autopilot's abort)")
        for route, status in self.demo.rollout_status().items():
            if route not in READ_ROUTES:
                continue
            if status["status"] == "rolled_back":
                say(f"{route}: already rolled back")
                continue
            out = self.demo.cli("rollout", "abort", route, "--config", self.demo.config, "--actor", "migrate.py")
            say(f"strangler rollout abort {route}: {out.strip()}")
        watch_rollouts(self.demo, self.a.timeout, expect_rollback=True, every=True)
        time.sleep(self.a.settle)
        self.evidence.show(self.traffic, READ_ROUTES)

        step_title(5, "routes.yaml as the walk found it")
        text = with_block(self.config.text(), memo["block_before"])
        text = with_autopilot(text, memo.get("autopilot_before"))
        self.config.apply(text, "the comment routes as before the walk")
        memo["walking"] = False
        self.save_memo(memo)
        time.sleep(self.a.settle)
        self.evidence.show(self.traffic)
        return True

    def broken(self):
        """--break: the comments upstream points at a build that renames a field; the autopilot rolls it back."""
        memo = self.memo()
        if memo is not None and memo.get("walking"):
            fail("a walk is in progress (demo-data/migrate.json): `make migrate ARGS=--rollback` first")
        text = self.config.text()
        _, block, _ = split_block(text)
        state = f"./demo-data/rollouts-broken-{int(time.time())}.json"
        build = BrokenBuild(self.demo.service)
        try:
            step_title(1, "a broken build of comments deployed (it renames updated_at)")
            broken = with_comments_target(text, BROKEN_PORT)
            broken = with_autopilot(with_block(broken, read_routes(self.plan) + write_routes("legacy")),
                                    f"autopilot: {{ state: {state}, interval: 1s }}")
            self.config.apply(broken, "comments upstream on the broken build (127.0.0.1:7012), reads under the plan")
            step_title(2, "the autopilot watches the evidence")
            statuses = watch_rollouts(self.demo, self.a.timeout, expect_rollback=True, every=True)
            rolled = [r for r in READ_ROUTES if statuses[r]["status"] == "rolled_back"]
            say(f"rolled back by itself: {', '.join(rolled)} (no person involved)")
            self.evidence.show(self.traffic, READ_ROUTES)
        finally:
            step_title(3, "routes.yaml as before, the broken build stopped")
            self.config.apply(text, "the demo's routes again")
            build.stop()
        return bool(rolled)

    def wait_caught_up(self, writer, reader, who):
        started = time.monotonic()
        while True:
            cursor, behind = self.demo.feed_behind(writer, reader)
            if behind <= self.a.max_lag_events:
                say(f"precondition: {who} has read the other side's feed to event {cursor}, "
                    f"{behind} event(s) behind (<= {self.a.max_lag_events})")
                return
            if time.monotonic() - started > 30:
                fail(f"{who} is {behind} events behind after 30 s: not handing over (see the runbook)")
            time.sleep(0.2)

    def wait_owner(self, base, owner, epoch, who, since):
        while self.demo.owner(base) != (owner, epoch):
            if time.monotonic() - since > 30:
                fail(f"{who} has not applied the handover (epoch {epoch}) within 30 s")
            time.sleep(0.02)
        say(f"{who} applied the handover from its feed {time.monotonic() - since:.2f} s after the call "
            f"and takes comment writes since (epoch {epoch})")

    def summary(self, completed):
        self.traffic.stop()
        say()
        say("== summary " + "=" * 68)
        published = self.demo.internal(self.demo.service, "GET",
                                       f"/internal/events?after={self.feed_at_start}&limit=1000")[1]["events"]
        moved = sum(1 for e in published if e["entity"] == "comment")
        now = demo_traffic()
        demo_served = demo_failed = 0
        if now and self.demo_traffic_at_start:
            demo_served = now["requests"] - self.demo_traffic_at_start["requests"]
            demo_failed = now["failed"] - self.demo_traffic_at_start["failed"]
        failed = self.traffic.failed + demo_failed
        say(f"requests served: {self.traffic.served + demo_served} (this walk's traffic {self.traffic.served}, "
            f"the demo's traffic {demo_served} as of its last progress line)")
        say(f"failed: {failed}" + (f"  first errors: {self.traffic.errors}" if self.traffic.errors else ""))
        say(f"writes sent again after a 421 (both sides said 'not me' for a moment): {self.traffic.misdirected}")
        owner, epoch = self.demo.owner(self.demo.monolith)
        say(f"writes moved: {moved} comment writes taken by the comments service during the walk "
            f"(its change feed); comment writes are now owned by {owner} (epoch {epoch})")
        say(f"took {time.monotonic() - self.t0:.0f} s; {'completed' if completed else 'stopped early'}")
        return 0 if completed and failed == 0 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--rollback", action="store_true", help="walk back to where the walk started")
    mode.add_argument("--break", dest="broken", action="store_true",
                      help="deploy a broken build of comments and watch the autopilot roll it back")
    ap.add_argument("--config", default=os.path.join(ROOT, "routes.yaml"))
    ap.add_argument("--proxy", default="http://127.0.0.1:8080")
    ap.add_argument("--admin", default="http://127.0.0.1:9901")
    ap.add_argument("--monolith", default="http://127.0.0.1:5000")
    ap.add_argument("--comments", default="http://127.0.0.1:7002")
    ap.add_argument("--internal-token", default=os.environ.get("TASKAPP_INTERNAL_TOKEN", "demo-internal-token"))
    ap.add_argument("--strangler", default=os.environ.get("STRANGLER_BIN") or os.path.join(ROOT, "target/release/strangler"))
    ap.add_argument("--hold", default="5s", help="the plan's hold on each step (demo: short)")
    ap.add_argument("--min-samples", type=int, default=100, help="shadow comparisons each step needs")
    ap.add_argument("--min-match", type=float, default=98.0, help="match rate each step needs (percent)")
    ap.add_argument("--min-requests", type=int, default=2, help="requests the service answers before its 5xx/p99 count")
    ap.add_argument("--reads-rps", type=float, default=30.0)
    ap.add_argument("--writes-rps", type=float, default=5.0)
    ap.add_argument("--max-lag-events", type=int, default=20, help="the feed lag a handover waits below")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of traffic after a step before its evidence")
    ap.add_argument("--timeout", type=float, default=240.0, help="longest wait for the read rollouts")
    a = ap.parse_args(argv)
    if not os.access(a.strangler, os.X_OK):
        ap.error(f"{a.strangler} is not an executable strangler binary (build it: make release)")
    walk = Walk(a)
    walk.preflight()
    completed = False
    try:
        if a.rollback:
            completed = walk.rollback()
        elif a.broken:
            completed = walk.broken()
        else:
            completed = walk.forward()
    finally:
        code = walk.summary(completed)
    return code


if __name__ == "__main__":
    sys.exit(main())
