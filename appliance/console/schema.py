"""The whole schema of the console's SQLite database, and the upgrades of databases made by older versions.

`store.py` (sites, settings, commands) and `records.py` (what `collect` stores) share one file,
`console.db`, so its tables are declared here only: two modules each creating "their" tables is
how the console once ended up with two last-seen tables of different time types.

Times the console measures are REAL seconds since the Unix epoch (UTC); they are turned into
RFC 3339 text only where they are shown.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable

from appliance.console.errors import Refused
from appliance.core.clock import parse_rfc3339

log = logging.getLogger("appliance.console.schema")

# Version 1: the layout from before this module (no version in `meta`): store.py's `seen`
# (RFC 3339 text) next to records.py's `last_seen` (REAL). An empty file counts as version 1 too.
# Version 2: one `last_seen` table (REAL epoch seconds).
# Version 3: remote updates: `releases`, `site_rings`, `rollouts`, `rollout_sites` (new tables only).
# Version 4: `telemetry` keeps `mqtt_reconnects` and `system_uptime_s` too (for `site SITE`).
# Version 5: `commands.operator`: the dashboard account that sent a command (NULL: the CLI).
# Version 6: `sites.lat`, `sites.lon`: where a site is (WGS 84 degrees, from the sites CSV), for the dashboard's map.
SCHEMA_VERSION = 6
VERSION_KEY = "schema_version"  # in `meta`, JSON-encoded like every other `meta` value

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('kecamatan', 'desa', 'other')),
    distance_km REAL,
    password TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    password_changed_at TEXT NOT NULL,
    lat REAL,
    lon REAL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    target TEXT NOT NULL,
    meeting_id TEXT,
    payload TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    results TEXT,
    operator TEXT
);
CREATE TABLE IF NOT EXISTS last_seen (site TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS site_state (site TEXT PRIMARY KEY, online INTEGER, state TEXT, at REAL NOT NULL,
    payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state_log (site TEXT NOT NULL, at REAL NOT NULL, online INTEGER, state TEXT,
    PRIMARY KEY (site, at, online, state)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (site TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, type TEXT, ok INTEGER,
    error TEXT, PRIMARY KEY (site, id, at)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (site TEXT NOT NULL, at REAL NOT NULL, type TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (site, at, type)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS telemetry (site TEXT NOT NULL, at REAL NOT NULL, state TEXT, uptime_s REAL,
    cpu_temp_c REAL, throttled TEXT, load1 REAL, mem_available_mb REAL, disk_free_mb REAL, boot_id TEXT,
    mqtt_reconnects REAL, system_uptime_s REAL, PRIMARY KEY (site, at)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heartbeats (site TEXT NOT NULL, bucket INTEGER NOT NULL,
    PRIMARY KEY (site, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uptime_days (site TEXT NOT NULL, date TEXT NOT NULL, up_s REAL, connected_s REAL,
    in_meeting_s REAL, meetings_joined INTEGER, boots INTEGER, reported_at REAL NOT NULL,
    PRIMARY KEY (site, date)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS selftests (site TEXT NOT NULL, at REAL NOT NULL, ok INTEGER, payload TEXT NOT NULL,
    PRIMARY KEY (site, at)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS releases (version TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    url TEXT NOT NULL, compatible TEXT NOT NULL, format TEXT NOT NULL, signer TEXT NOT NULL,
    bundle TEXT NOT NULL, published_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS site_rings (site TEXT PRIMARY KEY, ring TEXT NOT NULL CHECK (ring IN ('canary', 'main')));
CREATE TABLE IF NOT EXISTS rollouts (id INTEGER PRIMARY KEY, version TEXT NOT NULL, target TEXT NOT NULL,
    allow_downgrade INTEGER NOT NULL, max_failures INTEGER NOT NULL, expires_s REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'halted', 'done', 'stopped')), reason TEXT,
    started_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_sites (rollout INTEGER NOT NULL, site TEXT NOT NULL, ring TEXT NOT NULL,
    command_id TEXT, sent_at REAL, ack_ok INTEGER, ack_error TEXT, ack_at REAL,
    PRIMARY KEY (rollout, site)) WITHOUT ROWID
"""


def schema_version(db: sqlite3.Connection) -> int:
    """The layout version `db` says it has; 1 when it records none (made before versioning, or empty)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
    except sqlite3.OperationalError:  # no `meta` table yet
        return 1
    return int(json.loads(row[0])) if row else 1


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create the tables and upgrade an older layout, in one transaction; one read when already current.

    `db` must be in autocommit mode (`isolation_level=None`) and outside a transaction. Safe when
    several processes open the file at once (`collect` next to `status`): the version is read again
    under the write lock, so only the first one upgrades.
    """
    if schema_version(db) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        _upgrade(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def record_seen(db: sqlite3.Connection, seen: Iterable[tuple[str, float]]) -> None:
    """Remember when sites were last heard from (site, epoch seconds), inside the caller's transaction.

    An older time never replaces a newer one: messages arrive late or twice, and `status` and
    `collect` both write here.
    """
    db.executemany("INSERT INTO last_seen (site, at) VALUES (?, ?) "
                   "ON CONFLICT(site) DO UPDATE SET at = max(at, excluded.at)", list(seen))


def _upgrade(db: sqlite3.Connection) -> None:
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        # Written by a newer console: its tables may mean something this version does not know.
        raise Refused(f"the console database has schema version {version}, newer than this console's "
                      f"{SCHEMA_VERSION}: upgrade appliance-console")
    # Tables are only ever added with IF NOT EXISTS, so creating the current set first is safe on
    # any older layout and gives the data-moving steps below their target tables.
    for statement in TABLES.split(";"):
        if statement.strip():
            db.execute(statement)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _STEPS[target](db)
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (VERSION_KEY, json.dumps(SCHEMA_VERSION)))


def _merge_seen_into_last_seen(db: sqlite3.Connection) -> None:
    """Version 2: `status`'s old `seen` table (RFC 3339 text) joins `collect`'s `last_seen` (REAL)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'").fetchone():
        return
    seen = []
    for site, text in db.execute("SELECT site, at FROM seen").fetchall():
        try:
            seen.append((site, parse_rfc3339(text)))
        except ValueError:
            # Only the console itself wrote these, with rfc3339(); a broken one is not worth refusing to start.
            log.warning("dropping unreadable last-seen time %r of site %s", text, site)
    record_seen(db, seen)
    db.execute("DROP TABLE seen")


def _nothing_to_move(db: sqlite3.Connection) -> None:
    """Version 3 only adds tables (created above): no data moves."""


def _telemetry_counters(db: sqlite3.Connection) -> None:
    """Version 4: two more telemetry columns (NULL in the rows stored before)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(telemetry)")}
    for column in ("mqtt_reconnects", "system_uptime_s"):
        if column not in have:
            db.execute(f"ALTER TABLE telemetry ADD COLUMN {column} REAL")


def _command_operator(db: sqlite3.Connection) -> None:
    """Version 5: who sent a command from the dashboard (NULL for every command sent before, and from the CLI)."""
    if "operator" not in {row[1] for row in db.execute("PRAGMA table_info(commands)")}:
        db.execute("ALTER TABLE commands ADD COLUMN operator TEXT")


def _site_coordinates(db: sqlite3.Connection) -> None:
    """Version 6: where each site is (NULL for every site until a sheet with lat,lon is imported)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(sites)")}
    for column in ("lat", "lon"):
        if column not in have:
            db.execute(f"ALTER TABLE sites ADD COLUMN {column} REAL")


_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _merge_seen_into_last_seen, 3: _nothing_to_move,
                                                            4: _telemetry_counters, 5: _command_operator,
                                                            6: _site_coordinates}
