"""The console's SQLite database: sites with their broker credentials, settings, commands sent."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.console.errors import BadInput
from appliance.console.passwords import hash_password
from appliance.console.schema import ensure_schema, record_seen
from appliance.core.clock import rfc3339
from appliance.core.protocol import SITE_ID, SITE_KINDS

CONSOLE_USERNAME = "_console"  # can never be a site id: site ids start with [a-z0-9]


def site_username(site_id: str) -> str:
    """A site's broker login: its contract client id `appliance-<site>`. The generated broker forces the
    client id to the username (`use_username_as_clientid`), so no login can take another's client id."""
    return f"appliance-{site_id}"


# Characters that make a terminal or a viewer act rather than show: C0/C1 controls and DEL (escape
# sequences, carriage returns), line/paragraph separators and the bidirectional overrides and isolates.
_INVISIBLE_FORMATS = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in _INVISIBLE_FORMATS


def control_characters(text: str) -> list[str]:
    """`U+XXXX at position N` for each control character in `text` (positions count from 1)."""
    return [f"U+{ord(char):04X} at position {index}" for index, char in enumerate(text, 1) if is_control(char)]

# The 25 kecamatan of Banyuwangi; road distance to the regency office where it is known.
KECAMATAN: dict[str, float | None] = {
    "Bangorejo": None, "Banyuwangi": None, "Blimbingsari": None, "Cluring": None, "Gambiran": None,
    "Genteng": None, "Giri": None, "Glagah": None, "Glenmore": None, "Kabat": None,
    "Kalibaru": 60.0, "Kalipuro": None, "Licin": None, "Muncar": None, "Pesanggaran": 62.0,
    "Purwoharjo": None, "Rogojampi": None, "Sempu": None, "Siliragung": None, "Singojuruh": None,
    "Songgon": None, "Srono": None, "Tegaldlimo": None, "Tegalsari": None, "Wongsorejo": 27.9,
}

@dataclass(frozen=True)
class Site:
    id: str
    name: str
    kind: str
    distance_km: float | None
    ring: str | None = None  # update ring (`canary` or `main`) from a CSV import; None: leave it as it is
    lat: float | None = None  # WGS 84 degrees, for the dashboard's map; both or neither
    lon: float | None = None
    # From a sheet with lat,lon columns: its lat/lon replace the stored ones (None clears them). A sheet
    # without those columns leaves the stored coordinates alone, as it does the update ring.
    sets_coordinates: bool = False

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind, "distance_km": self.distance_km}
        if self.lat is not None:  # only when known: scripts reading `sites list --json` keep the shape they know
            result.update(lat=self.lat, lon=self.lon)
        return result


def new_password() -> str:
    return secrets.token_urlsafe(18)


def check_site(site_id: str, name: str, kind: str, distance: str | float | None) -> tuple[list[str], float | None]:
    """Problems with one site's fields (empty when fine), and the distance as a number."""
    problems = []
    if not SITE_ID.match(site_id or ""):
        problems.append(f"id {site_id!r} must match ^[a-z0-9][a-z0-9-]{{0,31}}$ (lower-case letters, digits, '-')")
    if not (name or "").strip():
        problems.append("name is empty")
    elif len(name) > 100:
        problems.append("name is longer than 100 characters")
    elif found := control_characters(name.strip()):
        problems.append(f"name contains control characters ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); "
                        "names are shown on terminals and in reports, where these would act, not show")
    if kind not in SITE_KINDS:
        problems.append(f"kind {kind!r} must be one of {', '.join(SITE_KINDS)}")
    value = None
    if distance not in (None, ""):
        try:
            value = float(distance)  # type: ignore[arg-type]
        except ValueError:
            problems.append(f"distance_km {distance!r} is not a number")
        else:
            if not 0 <= value <= 1000 or value != value:
                problems.append(f"distance_km {distance!r} must be between 0 and 1000")
                value = None
    return problems, value


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fresh = not self.path.exists()
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if fresh:
            self.path.chmod(0o600)
        ensure_schema(self.db)
        with self.transaction():
            if self.get_meta("seeded") is None:
                for name, distance in KECAMATAN.items():
                    self._insert(name.lower(), f"Kecamatan {name}", "kecamatan", distance)
                self.set_meta("seeded", rfc3339(time.time()))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- settings -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # --- sites ----------------------------------------------------------------------------------
    def sites(self, ids: list[str] | None = None, kind: str | None = None) -> list[Site]:
        rows = self.db.execute("SELECT id, name, kind, distance_km, lat, lon FROM sites ORDER BY id").fetchall()
        sites = [Site(row["id"], row["name"], row["kind"], row["distance_km"], lat=row["lat"], lon=row["lon"])
                 for row in rows]
        if kind is not None:
            sites = [site for site in sites if site.kind == kind]
        if ids is not None:
            by_id = {site.id: site for site in sites}
            unknown = [site_id for site_id in ids if site_id not in by_id]
            if unknown:
                raise BadInput(f"unknown site{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                               "(see `appliance-console sites list`)")
            sites = [by_id[site_id] for site_id in dict.fromkeys(ids)]
        return sites

    def site(self, site_id: str) -> Site:
        return self.sites([site_id])[0]

    def credentials(self) -> dict[str, tuple[str, str]]:
        """username -> (password, mosquitto hash) for every site and the console itself."""
        rows = self.db.execute("SELECT id, password, password_hash FROM sites ORDER BY id").fetchall()
        result = {row["id"]: (row["password"], row["password_hash"]) for row in rows}
        console = self.get_meta("console_credentials")
        if console:
            result[CONSOLE_USERNAME] = (console["password"], console["hash"])
        return result

    def site_password(self, site_id: str) -> str:
        self.site(site_id)
        return self.db.execute("SELECT password FROM sites WHERE id = ?", (site_id,)).fetchone()["password"]

    def _insert(self, site_id: str, name: str, kind: str, distance: float | None) -> None:
        password = new_password()
        now = rfc3339(time.time())
        self.db.execute(
            "INSERT INTO sites (id, name, kind, distance_km, password, password_hash, created_at, password_changed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (site_id, name, kind, distance, password, hash_password(password), now, now),
        )

    def add_site(self, site_id: str, name: str, kind: str, distance: str | float | None) -> Site:
        problems, value = check_site(site_id, name, kind, distance)
        if problems:
            raise BadInput(f"site {site_id!r} not added", problems)
        with self.transaction():
            if self.db.execute("SELECT 1 FROM sites WHERE id = ?", (site_id,)).fetchone():
                raise BadInput(f"site {site_id!r} already exists; nothing changed")
            self._insert(site_id, name.strip(), kind, value)
        return Site(site_id, name.strip(), kind, value)

    def remove_site(self, site_id: str) -> None:
        with self.transaction():
            if self.db.execute("DELETE FROM sites WHERE id = ?", (site_id,)).rowcount == 0:
                raise BadInput(f"unknown site: {site_id}; nothing changed")
            self.db.execute("DELETE FROM site_rings WHERE site = ?", (site_id,))

    def upsert_sites(self, rows: list[Site]) -> dict[str, list[str]]:
        """Add new sites and update the name, kind, distance (and coordinates) of known ones, all or nothing."""
        result: dict[str, list[str]] = {"added": [], "updated": [], "unchanged": []}
        with self.transaction():
            for site in rows:
                old = self.db.execute("SELECT name, kind, distance_km, lat, lon FROM sites WHERE id = ?",
                                      (site.id,)).fetchone()
                position = (site.lat, site.lon) if site.sets_coordinates or old is None else (old["lat"], old["lon"])
                if old is None:
                    self._insert(site.id, site.name, site.kind, site.distance_km)
                    self.db.execute("UPDATE sites SET lat = ?, lon = ? WHERE id = ?", (*position, site.id))
                    result["added"].append(site.id)
                elif (old["name"], old["kind"], old["distance_km"], old["lat"], old["lon"]) == (
                        site.name, site.kind, site.distance_km, *position):
                    result["unchanged"].append(site.id)
                else:
                    self.db.execute("UPDATE sites SET name = ?, kind = ?, distance_km = ?, lat = ?, lon = ? WHERE id = ?",
                                    (site.name, site.kind, site.distance_km, *position, site.id))
                    result["updated"].append(site.id)
                if site.ring is not None and self._set_ring(site.id, site.ring) and site.id in result["unchanged"]:
                    result["unchanged"].remove(site.id)
                    result["updated"].append(site.id)
        return result

    def _set_ring(self, site_id: str, ring: str) -> bool:
        """Put a site in an update ring (inside the caller's transaction); True when that changed it."""
        old = self.db.execute("SELECT ring FROM site_rings WHERE site = ?", (site_id,)).fetchone()
        if old is not None and old["ring"] == ring:
            return False
        self.db.execute("INSERT OR REPLACE INTO site_rings (site, ring) VALUES (?, ?)", (site_id, ring))
        return (old["ring"] if old else "main") != ring

    def set_rings(self, site_ids: list[str], ring: str) -> list[str]:
        """Put known sites in an update ring, all or nothing; the ids whose ring changed."""
        self.sites(site_ids)  # BadInput naming every unknown id
        with self.transaction():
            return [site_id for site_id in site_ids if self._set_ring(site_id, ring)]

    def rings(self) -> dict[str, str]:
        """site -> update ring for every registered site (`main` unless set)."""
        rows = self.db.execute("SELECT s.id, r.ring FROM sites s LEFT JOIN site_rings r ON r.site = s.id").fetchall()
        return {row[0]: row[1] or "main" for row in rows}

    def rotate_password(self, site_id: str) -> str:
        self.site(site_id)
        password = new_password()
        with self.transaction():
            self.db.execute("UPDATE sites SET password = ?, password_hash = ?, password_changed_at = ? WHERE id = ?",
                            (password, hash_password(password), rfc3339(time.time()), site_id))
        return password

    # --- commands -------------------------------------------------------------------------------
    def record_command(self, command: dict[str, Any], target: str, operator: str | None = None) -> None:
        """`operator`: the dashboard account that sent it (None: the CLI, run by whoever owns the home)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO commands (id, type, target, meeting_id, payload, sent_at, operator) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (command["id"], command["type"], target, command["body"].get("meeting_id"),
                 json.dumps(command, ensure_ascii=False), rfc3339(time.time()), operator),
            )

    def record_results(self, command_id: str, results: list[dict[str, Any]]) -> None:
        with self.transaction():
            self.db.execute("UPDATE commands SET results = ? WHERE id = ?", (json.dumps(results), command_id))

    def mark_seen(self, seen: dict[str, float]) -> None:
        """site -> epoch seconds it was seen online; the table `collect` also writes to."""
        with self.transaction():
            record_seen(self.db, seen.items())

    def last_seen(self) -> dict[str, float]:
        """site -> epoch seconds it was last seen online, by `status`, `watch` or `collect`."""
        return {row["site"]: row["at"] for row in self.db.execute("SELECT site, at FROM last_seen")}

    def meeting_target(self, meeting_id: str) -> str | None:
        """Which sites the latest `meeting.start` of this meeting went to (`group:x` or `sites:a,b`)."""
        row = self.db.execute("SELECT target FROM commands WHERE type = 'meeting.start' AND meeting_id = ? "
                              "ORDER BY sent_at DESC, rowid DESC LIMIT 1", (meeting_id,)).fetchone()
        return row["target"] if row else None

    def recent_streams(self, limit: int = 8) -> list[dict[str, str]]:
        """The program/ingest URL pairs of past meetings, newest first, each once: the presets the
        dashboard's start form offers (the centre streams again what it streamed before)."""
        streams: list[dict[str, str]] = []
        seen: set[tuple[str, str]] = set()
        rows = self.db.execute("SELECT payload FROM commands WHERE type = 'meeting.start' "
                               "ORDER BY sent_at DESC, rowid DESC LIMIT 500")
        for row in rows:
            body = json.loads(row["payload"]).get("body") or {}
            pair = (body.get("program_url") or "", body.get("ingest_url") or "")
            if pair[0] and pair not in seen:
                seen.add(pair)
                streams.append({"program_url": pair[0], "ingest_url": pair[1], "title": body.get("title") or ""})
                if len(streams) >= limit:
                    break
        return streams

    def last_meeting(self) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT payload FROM commands WHERE type = 'meeting.start' ORDER BY sent_at DESC, rowid DESC LIMIT 1"
        ).fetchone()
        return json.loads(row["payload"]) if row else None
