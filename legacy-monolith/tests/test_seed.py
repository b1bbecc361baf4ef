import os
import sqlite3
import subprocess
import sys
import time

from taskapp import create_app, seed
from helpers import ROOT


def _dump(path):
    conn = sqlite3.connect(path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def test_seed_small_is_deterministic(tmp_path):
    for name in ("a.db", "b.db"):
        subprocess.run([sys.executable, "-m", "taskapp.seed", "--db", str(tmp_path / name), "--small"],
                       cwd=ROOT, check=True, capture_output=True)
    da, db_ = _dump(tmp_path / "a.db"), _dump(tmp_path / "b.db")
    assert da == db_ and "INSERT INTO \"comments\"" in da


def test_seed_default_sizes_fast_and_usable(tmp_path):
    path = str(tmp_path / "full.db")
    t0 = time.monotonic()
    counts = seed.seed(path)
    assert time.monotonic() - t0 < 30
    assert counts["users"] == 200 and counts["projects"] == 50
    assert counts["tasks"] == 5000 and counts["comments"] == 20000
    app = create_app({"DB_PATH": path, "DATA_DIR": str(tmp_path / "d"), "NOTIFY_WORKER": False,
                      "JWT_SECRET": "x" * 40})
    c = app.test_client()
    r = c.post("/api/auth/login", json={"username": "user0007", "password": "password123"})
    assert r.status_code == 200
    h = {"Authorization": f"Bearer {r.json['token']}"}
    assert c.get("/api/users", headers=h).json["total"] == 200
    assert c.get("/api/tasks/1/comments", headers=h).status_code == 200
    # feed contains a create event for every seeded row, byte-identical to the API
    evs = c.get("/internal/events?after=0&limit=1000").json["events"]
    user7 = next(e for e in evs if e["entity"] == "user" and e["entity_id"] == 7)
    assert user7["payload"] == c.get("/api/users/7", headers=h).json
    conn = sqlite3.connect(path)
    cev = conn.execute("SELECT MIN(id) FROM events WHERE entity = 'comment'").fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    conn.close()
    assert total == counts["events"] == sum(v for k, v in counts.items() if k != "events")
    ev = c.get(f"/internal/events?after={cev - 1}&limit=1").json["events"][0]
    assert ev["entity"] == "comment" and ev["payload"] == c.get("/api/comments/1", headers=h).json
    assert not os.path.exists(path + "-journal")
