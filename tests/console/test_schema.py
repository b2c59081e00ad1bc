"""One module owns the console database's schema, and homes made by the previous version keep working."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

from appliance.console import records, schema
from appliance.console.context import Context
from appliance.console.errors import Refused
from appliance.console.home import Home
from appliance.console.operate import StatusBoard
from appliance.core.clock import parse_rfc3339, rfc3339
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic

ROOT = Path(__file__).resolve().parents[2]

# The layout the previous version left behind: store.py's tables (with `seen`, RFC 3339 text) and
# records.py's (with `last_seen`, REAL), no schema version. Spelled out here on purpose: this is
# what is on operators' disks, whatever schema.py says today.
OLD_LAYOUT = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sites (id TEXT PRIMARY KEY, name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('kecamatan', 'desa', 'other')), distance_km REAL, password TEXT NOT NULL,
    password_hash TEXT NOT NULL, created_at TEXT NOT NULL, password_changed_at TEXT NOT NULL);
CREATE TABLE commands (id TEXT PRIMARY KEY, type TEXT NOT NULL, target TEXT NOT NULL, meeting_id TEXT,
    payload TEXT NOT NULL, sent_at TEXT NOT NULL, results TEXT);
CREATE TABLE seen (site TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE site_state (site TEXT PRIMARY KEY, online INTEGER, state TEXT, at REAL NOT NULL, payload TEXT NOT NULL);
CREATE TABLE heartbeats (site TEXT NOT NULL, bucket INTEGER NOT NULL, PRIMARY KEY (site, bucket)) WITHOUT ROWID;
CREATE TABLE last_seen (site TEXT PRIMARY KEY, at REAL NOT NULL);
INSERT INTO meta VALUES ('seeded', '"2026-09-01T02:00:00.000Z"');
INSERT INTO sites VALUES ('kalibaru', 'Kecamatan Kalibaru', 'kecamatan', 60.0, 'pw', 'hash',
    '2026-09-01T02:00:00.000Z', '2026-09-01T02:00:00.000Z');
INSERT INTO seen VALUES ('kalibaru', '2026-10-07T03:04:05.678Z');
INSERT INTO seen VALUES ('muncar', '2026-10-07T01:00:00.000Z');
INSERT INTO last_seen VALUES ('muncar', 1791349200.0);
"""
MUNCAR_BY_COLLECT = 1791349200.0  # 2026-10-07T05:00:00Z: later than status saw it, so it must win


def _old_home(root: Path) -> Home:
    home = Home(root)
    home.ensure()
    with contextlib.closing(sqlite3.connect(home.database)) as db:
        db.executescript(OLD_LAYOUT)
    return home


def _tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_opening_an_old_home_moves_seen_into_last_seen(tmp_path: Path) -> None:
    home = _old_home(tmp_path)
    ctx = Context(home)
    try:
        seen = ctx.store.last_seen()
        assert seen == {"kalibaru": parse_rfc3339("2026-10-07T03:04:05.678Z"), "muncar": MUNCAR_BY_COLLECT}
        assert all(isinstance(at, float) for at in seen.values())
        # What `status` shows for a site it does not hear from now is the same text as before.
        assert StatusBoard(ctx).row("kalibaru")["last_seen"] == "2026-10-07T03:04:05.678Z"
        assert ctx.store.get_meta(schema.VERSION_KEY) == schema.SCHEMA_VERSION
        assert [site.id for site in ctx.store.sites()] == ["kalibaru"]  # an old home is not seeded again
    finally:
        ctx.close()
    tables = _tables(home.database)
    assert "seen" not in tables and {"last_seen", "telemetry", "selftests", "commands"} <= tables


def test_collect_opening_an_old_home_migrates_it_too(tmp_path: Path) -> None:
    home = _old_home(tmp_path)
    with contextlib.closing(records.connect(home.database)) as db:
        rows = dict(db.execute("SELECT site, at FROM last_seen").fetchall())
        assert schema.schema_version(db) == schema.SCHEMA_VERSION
    assert rows == {"kalibaru": parse_rfc3339("2026-10-07T03:04:05.678Z"), "muncar": MUNCAR_BY_COLLECT}
    assert "seen" not in _tables(home.database)


def test_status_and_collect_share_one_last_seen(tmp_path: Path) -> None:
    ctx = Context(Home(tmp_path))
    try:
        ctx.store.mark_seen({"kalibaru": 1791349200.0})
        with contextlib.closing(records.connect(ctx.home.database)) as db:
            db.execute("BEGIN")
            older = {"site": "kalibaru", "at": rfc3339(1791349100.0), "online": True, "state": "idle"}
            newer = {"site": "muncar", "at": rfc3339(1791349300.0), "online": True, "state": "idle"}
            for document in (older, newer):
                topic = site_topic(DEFAULT_TOPIC_PREFIX, document["site"], "state")
                assert records.ingest(db, topic, json.dumps(document).encode(), 0.0)
            db.execute("COMMIT")
        # A late message never moves a site's last-seen time back.
        assert ctx.store.last_seen() == {"kalibaru": 1791349200.0, "muncar": 1791349300.0}
    finally:
        ctx.close()


def test_a_database_from_a_newer_console_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "console.db"
    with contextlib.closing(records.connect(path)) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(schema.SCHEMA_VERSION + 1), schema.VERSION_KEY))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db, pytest.raises(Refused, match="newer"):
        schema.ensure_schema(db)


def test_schema_py_is_the_only_module_that_creates_tables() -> None:
    # The appliance's own uptime ledger is a different database (on the device, not the console's).
    other_databases = {Path("appliance/adapters/ledger.py")}
    creating = {path.relative_to(ROOT) for path in (ROOT / "appliance").rglob("*.py")
                if re.search(r"create\s+(temp\w*\s+)?(table|index)", path.read_text(encoding="utf-8"), re.IGNORECASE)}
    assert other_databases <= creating, "the exception above is stale: drop it"
    assert creating - other_databases == {Path("appliance/console/schema.py")}


def test_a_version_5_home_keeps_its_sites_and_gains_coordinates(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    fresh = Context(home)
    fresh.store.sites()  # the store opens lazily: this creates and seeds the database (the 25 kecamatan)
    fresh.close()
    # Back to what version 5 left on disk: no coordinate columns (SQLite >= 3.35 drops columns).
    with contextlib.closing(sqlite3.connect(home.database, isolation_level=None)) as db:
        db.execute("ALTER TABLE sites DROP COLUMN lat")
        db.execute("ALTER TABLE sites DROP COLUMN lon")
        db.execute("UPDATE meta SET value = '5' WHERE key = ?", (schema.VERSION_KEY,))
        db.execute("UPDATE sites SET password = 'kept' WHERE id = 'licin'")
    ctx = Context(home)
    try:
        assert ctx.store.get_meta(schema.VERSION_KEY) == schema.SCHEMA_VERSION == 6
        assert ctx.store.site_password("licin") == "kept" and len(ctx.store.sites()) == 25
        assert {(site.lat, site.lon) for site in ctx.store.sites()} == {(None, None)}
    finally:
        ctx.close()
