"""Who accepts the writes of `comments`: the ownership row, the handover, the 421.

The protocol (issue 18): ownership is data moved through the change feed.
The monolith ('legacy') owns comments at first. A handover is one
transaction on the current owner: owner := new owner, epoch + 1,
high_water := the largest comment id that exists or ever existed here, and
an 'ownership'/'handover' event in `events`, so the service starts taking
writes only once it has applied every earlier write from the feed. While
this side is not the owner it answers comment writes 421 (not processed,
retry on the owner); reads are served from the local copy, which
feed_consumer.py keeps up to date from the service's feed. The service hands
ownership back with the same event on its own feed (`apply_handover`).
"""
from . import errors
from .db import emit_event, write_tx
from .jsonutil import now_ts

FEATURE = "comments"
LOCAL_OWNER = "legacy"
OWNERS = ("legacy", "comments")


def state(db, feature=FEATURE):
    """The feature's row as the API shows it: {"feature", "owner", "epoch", "high_water"}."""
    r = db.execute("SELECT owner, epoch, high_water FROM ownership WHERE feature = ?", (feature,)).fetchone()
    return {"feature": feature, "owner": r["owner"], "epoch": r["epoch"], "high_water": r["high_water"]}


def require_local_owner(db):
    """Raise the 421 when comment writes belong to the other side."""
    st = state(db)
    if st["owner"] != LOCAL_OWNER:
        raise errors.misdirected(FEATURE, st["owner"], st["epoch"])


def comment_high_water(db):
    """Largest comment id that exists or ever existed here (rows and the AUTOINCREMENT sequence)."""
    top = db.execute("SELECT COALESCE(MAX(id), 0) FROM comments").fetchone()[0]
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'comments'").fetchone()
    return max(top, seq[0] if seq else 0)


def raise_comment_ids_above(db, high_water):
    """New local comment ids will be > high_water (ids allocated by the other owner stay unique)."""
    if db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'comments'",
                  (high_water,)).rowcount == 0:
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('comments', ?)", (high_water,))


def hand_over(target):
    """POST /internal/ownership/comments: give comment writes to `target`.

    Already `target` -> the current state (idempotent). Not the owner -> 409.
    Else one transaction: new owner, epoch + 1, high_water, ownership event."""
    with write_tx() as db:
        st = state(db)
        if st["owner"] == target:
            return st
        if st["owner"] != LOCAL_OWNER:
            raise errors.not_owner(FEATURE, st["owner"], st["epoch"])
        new = {"feature": FEATURE, "owner": target, "epoch": st["epoch"] + 1,
               "high_water": comment_high_water(db)}
        ts = now_ts()
        db.execute("UPDATE ownership SET owner = ?, epoch = ?, high_water = ?, updated_at = ? WHERE feature = ?",
                   (new["owner"], new["epoch"], new["high_water"], ts, FEATURE))
        emit_event(db, "ownership", 0, "handover", new, ts)
    return new


def apply_handover(db, payload):
    """Apply an ownership event from the service's feed inside the caller's transaction.

    Returns True when it changed the state; an epoch <= the stored one is a replay
    (False). Ownership coming back to 'legacy' raises the comment sequence to >= high_water."""
    if payload.get("feature") != FEATURE:
        return False
    owner, epoch, high_water = payload.get("owner"), payload.get("epoch"), payload.get("high_water")
    if owner not in OWNERS or not _is_int(epoch) or not _is_int(high_water) or high_water < 0:
        raise ValueError(f"ownership payload needs owner in {OWNERS}, integer epoch and high_water: {payload}")
    if epoch <= state(db)["epoch"]:
        return False
    db.execute("UPDATE ownership SET owner = ?, epoch = ?, high_water = ?, updated_at = ? WHERE feature = ?",
               (owner, epoch, high_water, now_ts(), FEATURE))
    if owner == LOCAL_OWNER:
        raise_comment_ids_above(db, high_water)
    return True


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)
