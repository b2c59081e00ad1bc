"""What `collect` stores from the sites' messages, in the console's SQLite; idempotent by construction.

Every table is keyed so that a message delivered twice (QoS 1 re-delivery, a retained copy next to
the persistent session's queued copy, two collectors) changes nothing the second time.
Connectivity evidence for the office-hours uptime goes into `heartbeats`: one row per site and
5-minute bucket in which the site published telemetry or an online state (both only sent while
connected: the device does not queue them for later). See docs/operations.md.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from appliance.console.fleet import decode, parse_topic
from appliance.console.schema import ensure_schema, record_seen
from appliance.core.clock import parse_rfc3339, rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX

BUCKET_S = 300


def connect(path: Path, any_thread: bool = False) -> sqlite3.Connection:
    """`any_thread`: the connection is handed to another thread (used by one thread at a time)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=not any_thread)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")  # collect writes while rollout and status read
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: consistent after a crash; acks follow commits
    ensure_schema(db)
    return db


def _time(value: Any) -> float | None:
    try:
        return parse_rfc3339(value)
    except (ValueError, TypeError):
        return None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ingest(db: sqlite3.Connection, topic: str, payload: bytes, received: float, prefix: str = DEFAULT_TOPIC_PREFIX) -> bool:
    """Store one message (inside the caller's transaction). False when it is not a device message we keep."""
    parsed = parse_topic(topic, prefix)
    document = decode(payload) if parsed else None
    if not parsed or document is None:
        return False
    site, kind = parsed
    at = _time(document.get("at"))
    if kind == "state":
        _state(db, site, document, at, received)
    elif kind == "telemetry" and at is not None:
        throttled = document.get("throttled")
        db.execute("INSERT OR IGNORE INTO telemetry (site, at, state, uptime_s, cpu_temp_c, throttled, load1, "
                   "mem_available_mb, disk_free_mb, boot_id, mqtt_reconnects, system_uptime_s) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (site, at, document.get("state"), _num(document.get("uptime_s")), _num(document.get("cpu_temp_c")),
                    json.dumps(throttled) if isinstance(throttled, dict) else None, _num(document.get("load1")),
                    _num(document.get("mem_available_mb")), _num(document.get("disk_free_mb")),
                    str(document.get("boot_id") or ""), _num(document.get("mqtt_reconnects")),
                    _num(document.get("system_uptime_s"))))
        _heartbeat(db, site, at)
    elif kind == "ack" and at is not None:
        error = document.get("error")
        db.execute("INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?, ?, ?)",
                   (site, str(document.get("id") or ""), at, document.get("type"), int(bool(document.get("ok"))),
                    json.dumps(error) if error else None))
    elif kind == "event" and at is not None and isinstance(document.get("type"), str):
        db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?)",
                   (site, at, document["type"], json.dumps(document, ensure_ascii=False)))
    elif kind == "uptime" and at is not None and isinstance(document.get("days"), list):
        _uptime(db, site, document["days"], at)
    elif kind == "selftest" and at is not None and isinstance(document.get("checks"), dict):
        db.execute("INSERT OR IGNORE INTO selftests VALUES (?, ?, ?, ?)",
                   (site, at, int(document.get("ok") is True), json.dumps(document, ensure_ascii=False)))
    else:
        return False
    seen = at if at is not None and document.get("online") is not False else None
    if seen is not None:
        record_seen(db, [(site, seen)])
    return True


def _state(db: sqlite3.Connection, site: str, document: dict[str, Any], at: float | None, received: float) -> None:
    online = document.get("online")
    online_flag = int(online) if isinstance(online, bool) else None
    state = document.get("state")
    if at is None:
        # The last will carries no time: the broker sent it when the site vanished, so roughly now.
        last = db.execute("SELECT online, state FROM state_log WHERE site = ? ORDER BY at DESC LIMIT 1",
                          (site,)).fetchone()
        if last is not None and (last["online"], last["state"]) == (online_flag, state):
            return  # the same will again (retained copy, re-delivery): nothing new happened
        at = received
    db.execute("INSERT OR IGNORE INTO state_log VALUES (?, ?, ?, ?)", (site, at, online_flag, state))
    db.execute("INSERT INTO site_state VALUES (?, ?, ?, ?, ?) ON CONFLICT(site) DO UPDATE SET "
               "online = excluded.online, state = excluded.state, at = excluded.at, payload = excluded.payload "
               "WHERE excluded.at >= site_state.at",
               (site, online_flag, state, at, json.dumps(document, ensure_ascii=False)))
    if online is True:
        _heartbeat(db, site, at)


def _heartbeat(db: sqlite3.Connection, site: str, at: float) -> None:
    db.execute("INSERT OR IGNORE INTO heartbeats VALUES (?, ?)", (site, int(at // BUCKET_S)))


def _uptime(db: sqlite3.Connection, site: str, days: list[Any], at: float) -> None:
    rows = []
    for day in days:
        if isinstance(day, dict) and isinstance(day.get("date"), str):
            rows.append((site, day["date"], _num(day.get("up_s")), _num(day.get("connected_s")),
                         _num(day.get("in_meeting_s")), int(_num(day.get("meetings_joined")) or 0),
                         int(_num(day.get("boots")) or 0), at))
    # Newest report wins, so an old copy delivered late never lowers a day's totals.
    db.executemany(
        "INSERT INTO uptime_days VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(site, date) DO UPDATE SET "
        "up_s = excluded.up_s, connected_s = excluded.connected_s, in_meeting_s = excluded.in_meeting_s, "
        "meetings_joined = excluded.meetings_joined, boots = excluded.boots, reported_at = excluded.reported_at "
        "WHERE excluded.reported_at >= uptime_days.reported_at", rows)


def counts(db: sqlite3.Connection) -> dict[str, int]:
    tables = ("site_state", "state_log", "acks", "events", "telemetry", "uptime_days", "selftests", "heartbeats")
    return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}  # noqa: S608


def describe(at: float | None) -> str | None:
    return rfc3339(at) if at is not None else None
