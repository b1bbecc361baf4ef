"""JSON helpers that match Flask's DefaultJSONProvider output exactly.

Flask's default provider (used by jsonify) sorts keys, escapes non-ASCII
(ensure_ascii=True), renders datetime/date with werkzeug.http.http_date
(RFC 822, always 'GMT') and, outside debug mode, uses compact separators.
`dumps_compact` is used for the payload text stored in the `events` table
so that event payloads are byte-identical to the API representation.
"""
import datetime as _dt
import json

from werkzeug.http import http_date

TS_FORMAT = "%Y-%m-%d %H:%M:%S"


def _default(o):
    if isinstance(o, _dt.date):
        return http_date(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def dumps_compact(obj):
    return json.dumps(obj, default=_default, sort_keys=True, ensure_ascii=True,
                      separators=(",", ":"))


def parse_ts(s):
    """SQLite TEXT timestamp -> naive UTC datetime (or None)."""
    if s is None:
        return None
    return _dt.datetime.strptime(s, TS_FORMAT)


def now_ts():
    """Current UTC time as the stored TEXT format."""
    return _dt.datetime.now(_dt.timezone.utc).strftime(TS_FORMAT)
