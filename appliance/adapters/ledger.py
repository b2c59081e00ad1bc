"""The uptime ledger on the SD card: SQLite, WAL, synchronous commits, one small page per checkpoint.

Why these settings: every checkpoint (≤ 1 per minute) is one transaction, so a SIGKILL or a power
cut leaves the last committed checkpoint (WAL + synchronous=FULL). The days and the ledger's own
state row live in one WITHOUT ROWID table keyed by date, the state row under "~state" (sorts after
every date), so a normal checkpoint rewrites one 512-byte page: ~0.8 MB/day instead of ~12 MB/day
with the default 4 KiB pages (measured by benchmarks/bench_uptime.py).

Damage and a bad disk are told apart, because a device that confuses them loses its ledger and
restarts forever (issue 15, finding 3):
- Damage is only SQLite's own verdict: SQLITE_CORRUPT, SQLITE_NOTADB ("file is not a database"), or a
  `PRAGMA quick_check` that answers anything but "ok". Only then is the file set aside as
  `uptime.db.broken-<time>` (with its -wal and -shm) and a new ledger started.
- A full disk (SQLITE_FULL, ENOSPC), an I/O error or a read-only file system is not damage: the file
  stays exactly as it is, the ledger lives on in memory, `HealthReport("disk", "error", why)` is
  posted, and every later checkpoint tries again with every day changed since the last save that
  reached the disk; the first one that succeeds posts `HealthReport("disk", "ok")`. A ledger that
  cannot even be read (a failing card) is never written over by this run: it waits for the next start.
- A state row that is not valid JSON is treated as missing (logged); the days are kept.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.core.io import HealthReport
from appliance.core.uptime import Day, LedgerState

log = logging.getLogger(__name__)

STATE_KEY = "~state"
SCHEMA = """CREATE TABLE IF NOT EXISTS days (
    date TEXT PRIMARY KEY, up_s REAL NOT NULL DEFAULT 0, connected_s REAL NOT NULL DEFAULT 0,
    in_meeting_s REAL NOT NULL DEFAULT 0, meetings_joined INTEGER NOT NULL DEFAULT 0,
    boots INTEGER NOT NULL DEFAULT 0, extra TEXT) WITHOUT ROWID"""
# SQLite's primary result codes that mean "this file is damaged"; everything else is the disk's doing.
CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
DISK_ERRORS = (sqlite3.Error, OSError)


class LedgerCorrupt(Exception):
    """`PRAGMA quick_check` found damage (its answer is in the message)."""


def is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, LedgerCorrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in CORRUPT_CODES


def describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else f"{exc}"


class LedgerStore:
    def __init__(self, state_dir: str | os.PathLike[str], filename: str = "uptime.db",
                 post: Callable[[Any], None] | None = None) -> None:
        self.path = Path(state_dir) / filename
        self.db: sqlite3.Connection | None = None
        self._post = post
        self.problem = ""     # why the ledger is not on disk right now; "" while every save reaches it
        self.readable = True  # False: a file is there that could not be read; this run never writes over it
        self._unsaved: dict[str, Day] = {}

    # --- opening ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Open for saving. Only damage sets the file aside; a disk that cannot be written is reported
        and the ledger goes on in memory (`load` then reads the file read-only if it can)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._connect()
            return
        except (*DISK_ERRORS, LedgerCorrupt) as exc:
            if not is_corrupt(exc):
                self._failed("cannot open it for writing", exc)
                return
            if not self._set_aside(exc):
                return
        try:
            self.db = self._connect()
        except (*DISK_ERRORS, LedgerCorrupt) as exc:
            self._failed("cannot start a new one", exc)

    def _connect(self) -> sqlite3.Connection:
        # Opened by the daemon's constructor, used by its loop thread (one at a time, never both).
        db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
        try:
            db.execute("PRAGMA page_size = 512")  # only takes effect on a new file, before WAL
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(SCHEMA)
            _quick_check(db)
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, exc: BaseException) -> bool:
        """Keep the evidence, start anew. False if even the rename failed (then nothing is written over)."""
        broken = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
        log.error("uptime ledger %s is damaged (%s); moved to %s, starting a new one", self.path, describe(exc), broken)
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(str(self.path) + suffix)
                if source.exists():
                    os.replace(source, Path(str(broken) + suffix))
        except OSError as rename_error:
            self.readable = False
            self._failed("damaged, and cannot be moved aside", rename_error)
            return False
        return True

    # --- reading ---------------------------------------------------------------------------------
    def load(self) -> tuple[list[Day], LedgerState]:
        """The saved days and state. Never raises for a bad disk or a damaged file: see the module doc."""
        if self.db is not None:
            try:
                return _read(self.db)
            except DISK_ERRORS as exc:
                if not is_corrupt(exc):
                    self.readable = False
                    self._drop_connection()
                    self._failed("cannot read it; it is kept as it is, this run's ledger is in memory only", exc)
                    return [], LedgerState()
                self._drop_connection()
                if self._set_aside(exc):
                    self.open()
                return [], LedgerState()
        try:
            if not self.path.exists() or self.path.stat().st_size == 0:
                return [], LedgerState()
            return self._read_only()
        except (*DISK_ERRORS, LedgerCorrupt) as exc:
            if is_corrupt(exc):
                self._set_aside(exc)
            else:
                self.readable = False
                self._failed("cannot read it; it is kept as it is, this run's ledger is in memory only", exc)
            return [], LedgerState()

    def _read_only(self) -> tuple[list[Day], LedgerState]:
        """Read a ledger that cannot be opened for writing (full or read-only disk)."""
        uri = self.path.absolute().as_uri()
        attempts = [f"{uri}?mode=ro"]
        wal = Path(f"{self.path}-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            # No WAL to miss: read without the -shm file that a full disk cannot create.
            attempts.append(f"{uri}?immutable=1")
        failure: BaseException | None = None
        for address in attempts:
            try:
                db = sqlite3.connect(address, uri=True)
            except sqlite3.Error as exc:
                failure = exc
                continue
            try:
                _quick_check(db)
                return _read(db)
            except sqlite3.Error as exc:
                if is_corrupt(exc):
                    raise
                failure = exc
            finally:
                db.close()
        assert failure is not None
        raise failure

    # --- saving ----------------------------------------------------------------------------------
    def save(self, days: list[Day], state: LedgerState, pending: dict[str, float], keep: list[str]) -> bool:
        """One transaction: the changed days, the state row, and days no longer kept removed.

        When the disk cannot take it, nothing is lost: the days wait here and go with the next save
        that can (False is returned, and the disk's trouble is posted once per reason).
        """
        for day in days:
            self._unsaved[day.date] = day
        if keep:
            self._unsaved = {date: day for date, day in self._unsaved.items() if date >= min(keep)}
        if not self.readable:
            return False
        extra = json.dumps({"high_water": round(state.high_water, 3), "last_boot_id": state.last_boot_id,
                            "carry": pending or None}, separators=(",", ":"))
        try:
            if self.db is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = self._connect()
            _write(self.db, list(self._unsaved.values()), extra, keep)
        except (*DISK_ERRORS, LedgerCorrupt) as exc:
            # Damage found now is only reported: the file is set aside at the next start, not under a running ledger.
            self._drop_connection()
            self._failed("cannot save", exc)
            return False
        self._unsaved.clear()
        if self.problem:
            log.warning("uptime ledger %s saved again", self.path)
            self.problem = ""
            self._report("ok")
        return True

    def close(self) -> None:
        self._drop_connection()

    # --- trouble ---------------------------------------------------------------------------------
    def _failed(self, action: str, exc: BaseException) -> None:
        detail = f"uptime ledger {self.path}: {action}: {describe(exc)}"
        if detail == self.problem:
            return  # logged once per reason, not at every checkpoint
        log.error("%s; the ledger is kept in memory and saved again when the disk allows", detail)
        if not self.problem:
            self._report("error", detail)  # the change to "error"; a new reason does not change the health
        self.problem = detail

    def _report(self, value: str, detail: str = "") -> None:
        if self._post is not None:
            self._post(HealthReport("disk", value, detail))

    def _drop_connection(self) -> None:
        if self.db is None:
            return
        db, self.db = self.db, None
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may have rolled back on its own (SQLITE_FULL, SQLITE_IOERR)
        try:
            db.close()
        except sqlite3.Error as exc:
            log.warning("closing the uptime ledger: %s", describe(exc))


def _quick_check(db: sqlite3.Connection) -> None:
    """quick_check answers one row "ok", or rows describing the damage (it does not raise for those)."""
    answer = [row[0] for row in db.execute("PRAGMA quick_check")]
    if answer != ["ok"]:
        raise LedgerCorrupt("quick_check: " + "; ".join(str(line) for line in answer[:5]))


def _read(db: sqlite3.Connection) -> tuple[list[Day], LedgerState]:
    days, state = [], LedgerState()
    for row in db.execute("SELECT date, up_s, connected_s, in_meeting_s, meetings_joined, boots, extra "
                          "FROM days ORDER BY date"):
        if row[0] == STATE_KEY:
            state = _state_from(row[6])
        else:
            days.append(Day(row[0], row[1], row[2], row[3], row[4], row[5]))
    return days, state


def _state_from(extra: str | None) -> LedgerState:
    """The state row; one that cannot be understood is treated as missing (a restart, not a crash)."""
    try:
        values = json.loads(extra or "{}")
        if not isinstance(values, dict):
            raise ValueError(f"not a JSON object: {type(values).__name__}")
        carry = values.get("carry") or None
        if carry is not None:
            carry = {str(key): float(value) for key, value in dict(carry).items()}
        return LedgerState(float(values.get("high_water", 0.0)), str(values.get("last_boot_id", "")), carry)
    except (ValueError, TypeError, RecursionError) as exc:
        log.error("uptime ledger: the state row is unreadable (%s: %.80r); treated as missing, the days are kept",
                  exc, extra)
        return LedgerState()


def _write(db: sqlite3.Connection, days: list[Day], extra: str, keep: list[str]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(
            "INSERT OR REPLACE INTO days (date, up_s, connected_s, in_meeting_s, meetings_joined, boots) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(d.date, d.up_s, d.connected_s, d.in_meeting_s, d.meetings_joined, d.boots) for d in days])
        db.execute("INSERT OR REPLACE INTO days (date, extra) VALUES (?, ?)", (STATE_KEY, extra))
        if keep:
            db.execute("DELETE FROM days WHERE date < ? AND date != ?", (min(keep), STATE_KEY))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
