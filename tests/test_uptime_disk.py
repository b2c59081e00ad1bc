"""The ledger on a full, read-only or failing disk, and on a damaged file (issue 15, finding 3).

Real parts only: the real SQLite adapter on a real tmpfs of 512 KiB filled to the last byte, real
daemons (`appliance run`) on it talking to a real Mosquitto. A full disk is not damage: the ledger
file stays as it is, the daemon keeps running with its ledger in memory, says `disk: error` in its
state and telemetry, and saves again once there is space. Only what SQLite calls damage is set aside.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance.adapters.ledger import STATE_KEY, LedgerStore
from appliance.core import io
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance.core.uptime import Day, LedgerState
from appliance_dev.broker import Mosquitto
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.disk import fill, tmpfs
from tests.support.site import REPO, ConsoleKey

SITE = "kalibaru"
STATE = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "state")
UPTIME = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "uptime")
TELEMETRY = site_topic(DEFAULT_TOPIC_PREFIX, SITE, "telemetry")
JAKARTA = ZoneInfo("Asia/Jakarta")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def last_days(count: int) -> list[Day]:
    """`count` days up to yesterday in Jakarta, each with some up time, as a ledger a month old has."""
    today = datetime.now(JAKARTA).date()
    return [Day((today - timedelta(days=ago)).isoformat(), 80000.0, 79000.0, 3600.0, 1, 1)
            for ago in range(count, 0, -1)]


def write_ledger(directory: Path, days: list[Day]) -> None:
    store = LedgerStore(directory)
    store.open()
    store.save(days, LedgerState(time.time() - 86400, "an-earlier-boot"), {}, [d.date for d in days])
    store.close()


class Posted(list):
    """What the adapter posts to the loop."""

    def health(self) -> list[tuple[str, str]]:
        return [(event.component, event.value) for event in self if isinstance(event, io.HealthReport)]


# --- the adapter -----------------------------------------------------------------------------------

@needs_root
def test_full_disk_keeps_the_file_and_the_days_and_saves_again_when_space_returns(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state") as state:
        month = last_days(28)
        write_ledger(state, month)
        before = (state / "uptime.db").read_bytes()
        filler = fill(state)

        posted = Posted()
        store = LedgerStore(state, post=posted.append)
        store.open()
        days, ledger_state = store.load()
        assert [day.date for day in days] == [day.date for day in month]  # read although nothing can be written
        assert ledger_state.last_boot_id == "an-earlier-boot"
        assert not list(state.glob("*.broken-*")) and (state / "uptime.db").read_bytes() == before
        assert posted.health() == [("disk", "error")]
        assert "SQLITE_" in posted[0].detail

        today = Day(datetime.now(JAKARTA).date().isoformat(), 120.0, 120.0, 0.0, 0, 1)
        keep = [day.date for day in month] + [today.date]
        assert store.save([today], LedgerState(time.time(), "this-boot"), {}, keep) is False
        later = Day(today.date, 180.0, 180.0, 0.0, 0, 1)
        assert store.save([], LedgerState(time.time(), "this-boot"), {}, keep) is False
        assert posted.health() == [("disk", "error")]  # reported once, not at every checkpoint
        assert (state / "uptime.db").read_bytes() == before

        filler.unlink()
        assert store.save([later], LedgerState(time.time(), "this-boot"), {}, keep) is True
        assert posted.health() == [("disk", "error"), ("disk", "ok")]
        store.close()

        reopened = LedgerStore(state)
        reopened.open()
        saved, saved_state = reopened.load()
        reopened.close()
        assert [day.date for day in saved] == keep and saved[-1].up_s == 180.0
        assert saved_state.last_boot_id == "this-boot"


WRITER_KILLED_MID_WAL = """
import os, sys, time
from appliance.adapters.ledger import LedgerStore
from appliance.core.uptime import Day, LedgerState
store = LedgerStore(sys.argv[1]); store.open()
store.save([Day("2026-11-27", 600.0, 600.0, 0.0, 0, 1)], LedgerState(1.0, "b"), {}, ["2026-11-27"])
os.kill(os.getpid(), 9)  # the commit is in the WAL only, not yet in uptime.db
"""


@needs_root
def test_full_disk_after_a_power_cut_still_reads_what_only_the_wal_holds(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state") as state:
        subprocess.run([sys.executable, "-c", WRITER_KILLED_MID_WAL, str(state)], cwd=REPO)
        assert (state / "uptime.db-wal").stat().st_size > 0
        fill(state)
        store = LedgerStore(state)
        store.open()
        days, _ = store.load()
        store.close()
        assert [(day.date, day.up_s) for day in days] == [("2026-11-27", 600.0)]
        assert not list(state.glob("*.broken-*"))


@needs_root
def test_read_only_disk_is_not_damage(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state") as state:
        write_ledger(state, last_days(3))
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        posted = Posted()
        store = LedgerStore(state, post=posted.append)
        store.open()
        assert len(store.load()[0]) == 3
        assert store.save(last_days(1), LedgerState(), {}, []) is False
        assert posted.health() == [("disk", "error")]
        subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
        assert store.save([], LedgerState(), {}, []) is True
        assert posted.health() == [("disk", "error"), ("disk", "ok")]
        store.close()
        assert not list(state.glob("*.broken-*"))


def test_a_ledger_that_cannot_be_opened_at_all_is_neither_moved_nor_written_over(tmp_path: Path) -> None:
    # SQLITE_CANTOPEN is not damage (here: the path is a directory; on a Pi: a card that stopped answering).
    (tmp_path / "uptime.db").mkdir()
    (tmp_path / "uptime.db" / "keep-me").write_text("evidence")
    posted = Posted()
    store = LedgerStore(tmp_path, post=posted.append)
    store.open()
    assert store.load() == ([], LedgerState())
    assert store.save(last_days(1), LedgerState(), {}, []) is False
    store.close()
    assert (tmp_path / "uptime.db" / "keep-me").read_text() == "evidence"
    assert not list(tmp_path.glob("*.broken-*"))
    assert posted.health() == [("disk", "error")] and not store.readable


def damaged_but_openable(directory: Path) -> None:
    """A ledger whose b-tree page 3 has a broken free-space field: SQLite opens it and reads it, and
    only `PRAGMA quick_check` tells, by answering rows of findings instead of "ok" (it does not raise)."""
    days = [Day(f"2026-{month:02d}-{day:02d}", 100.0, 50.0, 0.0, 1, 1) for month in range(1, 13) for day in range(1, 29)]
    write_ledger(directory, days)
    path = directory / "uptime.db"
    data = bytearray(path.read_bytes())
    data[2 * 512 + 5:2 * 512 + 7] = b"\xff\x7f"  # page 3 (512-byte pages), header offset 5: cell content start
    path.write_bytes(bytes(data))
    db = sqlite3.connect(path)
    try:
        answer = [row[0] for row in db.execute("PRAGMA quick_check")]
    finally:
        db.close()
    assert answer != ["ok"] and "corruption" in answer[0], answer


def test_damage_that_only_quick_check_reports_is_set_aside(tmp_path: Path) -> None:
    damaged_but_openable(tmp_path)
    store = LedgerStore(tmp_path)
    store.open()
    assert store.load()[0] == []
    assert store.save(last_days(1), LedgerState(), {}, []) is True
    store.close()
    assert len(list(tmp_path.glob("uptime.db.broken-*"))) >= 1


def test_state_row_that_is_not_json_is_treated_as_missing_and_the_days_are_kept(tmp_path: Path) -> None:
    write_ledger(tmp_path, last_days(5))
    for bad in ("{not json", "[1, 2]", '{"high_water": "soon", "carry": 3}'):
        db = sqlite3.connect(tmp_path / "uptime.db")
        with db:
            db.execute("UPDATE days SET extra = ? WHERE date = ?", (bad, STATE_KEY))
        db.close()
        store = LedgerStore(tmp_path)
        store.open()
        days, state = store.load()
        store.close()
        assert len(days) == 5 and state == LedgerState(), bad
    assert not list(tmp_path.glob("*.broken-*"))


# --- the daemon --------------------------------------------------------------------------------------

def take_over_session(broker: Mosquitto) -> None:
    """Connect once with the daemon's own client id: the broker drops the daemon's session, it
    reconnects, and a reconnect saves and republishes the ledger at once (instead of waiting up to the
    60 s checkpoint interval)."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-i", f"appliance-{SITE}",
                    "-t", "test/takeover", "-m", "x", "-q", "1"], check=True, timeout=10)


@needs_root
def test_daemon_on_a_full_disk_keeps_running_and_saves_again(tmp_path: Path, broker: Mosquitto,
                                                              observer: MqttRecorder, console_key: ConsoleKey) -> None:
    month = last_days(28)
    with tmpfs(tmp_path / f"{SITE}-state") as state:
        write_ledger(state, month)
        filler = fill(state)
        config = site_config(tmp_path, SITE, broker.url, console_key.public_b64, extra="[telemetry]\ninterval_s = 5\n")
        daemon = DaemonProcess(config)
        try:
            daemon.start().wait_connected()
            _, retained = observer.wait_for(lambda t, p: t == STATE and p.get("health", {}).get("disk") == "error")
            assert retained["online"] is True
            _, uptime = observer.wait_for(lambda t, p: t == UPTIME)
            assert [day["date"] for day in uptime["days"]][:28] == [day.date for day in month]  # nothing lost
            _, telemetry = observer.wait_for(lambda t, p: t == TELEMETRY, timeout=15)
            assert telemetry["disk"] == "error"
            assert daemon.status()["health"]["disk"] == "error"
            assert daemon.alive()
            assert sorted(path.name for path in state.iterdir() if "broken" in path.name) == []

            filler.unlink()  # space again
            mark = observer.mark()
            take_over_session(broker)
            observer.wait_for(lambda t, p: t == STATE and p.get("health", {}).get("disk") == "ok", timeout=20, after=mark)
            assert daemon.status()["health"]["disk"] == "ok"
        finally:
            daemon.stop()
        assert "Traceback" not in daemon.log(), daemon.log()
        store = LedgerStore(state)
        store.open()
        saved, saved_state = store.load()
        store.close()
    today = datetime.now(JAKARTA).date().isoformat()
    assert [day.date for day in saved][:28] == [day.date for day in month]
    assert saved[-1].date == today and saved[-1].up_s > 0 and saved[-1].boots == 1
    assert saved_state.last_boot_id != "an-earlier-boot"


def test_daemon_starts_with_a_state_row_that_is_not_json(tmp_path: Path, broker: Mosquitto, observer: MqttRecorder,
                                                         console_key: ConsoleKey) -> None:
    state = tmp_path / f"{SITE}-state"
    state.mkdir()
    month = last_days(28)
    write_ledger(state, month)
    db = sqlite3.connect(state / "uptime.db")
    with db:
        db.execute("UPDATE days SET extra = '{\"high_water\": 17' WHERE date = ?", (STATE_KEY,))
    db.close()
    daemon = DaemonProcess(site_config(tmp_path, SITE, broker.url, console_key.public_b64))
    try:
        daemon.start().wait_connected()
        _, uptime = observer.wait_for(lambda t, p: t == UPTIME)
        assert [day["date"] for day in uptime["days"]][:28] == [day.date for day in month]
        assert "state row is unreadable" in daemon.log()
    finally:
        daemon.stop()
    assert not list(state.glob("*.broken-*"))
