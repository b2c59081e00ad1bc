"""The uptime ledger: accounting on a fake clock through the real core, saved by the real SQLite adapter."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance.adapters.ledger import LedgerStore
from appliance.core import io
from appliance.core.clock import FakeClock
from appliance.core.machine import IN_MEETING
from appliance.core.uptime import UptimeLedger
from tests.core_helpers import announce, make_core, press, published

JAKARTA = ZoneInfo("Asia/Jakarta")


def at(text: str) -> float:
    """Wall time of a local Jakarta time, e.g. '2026-11-27 09:00'."""
    return datetime.fromisoformat(text).replace(tzinfo=JAKARTA).timestamp()


class Site:
    """The core as the daemon runs it: checkpoint timer every `step` s, effects saved by the real adapter."""

    def __init__(self, tmp: Path, clock: FakeClock | None = None, synced: bool = True, **settings: float) -> None:
        self.store = LedgerStore(tmp)
        self.store.open()
        days, state = self.store.load()
        self.clock = clock or FakeClock(wall=at("2026-11-27 09:00"))
        self.core, _ = make_core(clock=self.clock, uptime=UptimeLedger("Asia/Jakarta", days, state), **settings)
        self.retained: dict | None = None
        if synced:
            self.apply(self.core.handle(io.HealthReport("clock", "synced")))

    def apply(self, effects: list) -> list:
        for effect in effects:
            if isinstance(effect, io.SaveUptime):
                self.store.save(list(effect.days), effect.state, effect.pending, list(effect.keep))
            elif isinstance(effect, io.Publish) and effect.topic.endswith("/uptime"):
                assert effect.retain
                self.retained = effect.payload
        return effects

    def run(self, seconds: float, step: float = 60.0) -> None:
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            self.clock.advance(min(step, end - self.clock.monotonic()))
            self.apply(self.core.handle(io.CheckpointDue()))

    def saved(self) -> dict[str, dict]:
        reopened = LedgerStore(self.store.path.parent)
        reopened.open()
        days, _ = reopened.load()
        reopened.close()
        return {day.date: day.as_message() for day in days}


def test_broker_down_ten_minutes_keeps_every_second(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run(600)
    site.apply(site.core.handle(io.BrokerDisconnected("test")))
    published_before = site.retained
    site.run(600)  # ten minutes without a broker: checkpoints go on, nothing is published
    assert site.retained is published_before
    site.apply(site.core.handle(io.BrokerConnected()))  # the reconnect republishes at once
    site.run(600)
    today = {"date": "2026-11-27", "up_s": 1800, "connected_s": 1200, "in_meeting_s": 0, "meetings_joined": 0,
             "boots": 1}
    assert site.retained["days"] == [today]
    assert site.retained["tz"] == "Asia/Jakarta" and site.retained["site"] == "kalibaru"
    assert site.saved() == {"2026-11-27": today}


def test_reconnect_message_already_holds_the_outage(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.apply(site.core.handle(io.BrokerDisconnected("test")))
    site.clock.advance(600)  # no checkpoint at all during the outage (e.g. timer delayed)
    effects = site.apply(site.core.handle(io.BrokerConnected()))
    kinds = [e.topic.rsplit("/", 1)[1] for e in effects if isinstance(e, io.Publish)]
    assert kinds == ["state", "uptime"]  # the state first, as before; then the ledger
    assert site.retained["days"][0]["up_s"] == 600 and site.retained["days"][0]["connected_s"] == 0


def test_meetings_and_meeting_time_counted(tmp_path: Path) -> None:
    site = Site(tmp_path)
    announce(site.core)
    site.apply(press(site.core, site.clock))
    assert site.core.state == IN_MEETING
    site.run(1200)
    site.apply(press(site.core, site.clock, 3.5))  # hold: leave
    site.run(60)
    day = site.saved()["2026-11-27"]
    assert day["meetings_joined"] == 1 and day["in_meeting_s"] == pytest.approx(1203, abs=1)
    assert day["up_s"] == pytest.approx(1264, abs=1)


def test_day_boundary_in_jakarta_not_utc(tmp_path: Path) -> None:
    site = Site(tmp_path, FakeClock(wall=at("2026-11-27 23:30")))
    site.run(3600)  # 23:30 -> 00:30 local; UTC midnight (07:00 local) is not a boundary
    saved = site.saved()
    assert saved["2026-11-27"]["up_s"] == 1800 and saved["2026-11-28"]["up_s"] == 1800
    assert saved["2026-11-27"]["boots"] == 1 and saved["2026-11-28"]["boots"] == 0
    site.run(7 * 3600)  # through 07:00 local = 00:00 UTC
    assert sorted(site.saved()) == ["2026-11-27", "2026-11-28"]


def test_one_checkpoint_spanning_midnight_is_split(tmp_path: Path) -> None:
    site = Site(tmp_path, FakeClock(wall=at("2026-11-27 23:59:30")))
    site.run(60)
    saved = site.saved()
    assert saved["2026-11-27"]["up_s"] == 30 and saved["2026-11-28"]["up_s"] == 30


def test_clock_jump_forwards_counts_monotonic_time_on_the_new_day(tmp_path: Path) -> None:
    # A Pi without RTC boots thinking it is the day before; NTP then steps the clock forwards.
    site = Site(tmp_path, FakeClock(wall=at("2026-11-26 18:00")))
    site.run(600)
    site.clock.advance(30)
    site.clock.jump_wall(13 * 3600)  # NTP: it is really 2026-11-27 07:10:30
    site.clock.advance(30)
    site.apply(site.core.handle(io.CheckpointDue()))
    site.run(600)
    saved = site.saved()
    total = sum(day["up_s"] for day in saved.values())
    assert total == 1260  # every monotonic second, once, despite 13 h of wall jump
    assert saved["2026-11-27"]["up_s"] == 660  # the interval with the jump lands on the corrected clock


def test_unsynced_old_clock_waits_until_it_is_plausible(tmp_path: Path) -> None:
    site = Site(tmp_path, FakeClock(wall=at("2026-11-27 10:00")))
    site.run(600)
    # Restart on a Pi without RTC: the clock says 1970 and is not synchronised.
    site.store.close()
    clock = FakeClock(wall=86400.0 * 3, monotonic=5.0)
    again = Site(tmp_path, clock, synced=False)
    again.core.uptime.start(clock.monotonic(), "boot-2")
    again.run(300)
    assert "1970-01-04" not in again.saved() and again.saved()["2026-11-27"]["up_s"] == 600
    clock.jump_wall(at("2026-11-27 11:00") - clock.wall())
    again.apply(again.core.handle(io.HealthReport("clock", "synced")))
    again.run(60)
    saved = again.saved()
    assert list(saved) == ["2026-11-27"] and saved["2026-11-27"]["up_s"] == 960
    assert saved["2026-11-27"]["boots"] == 2


def test_pending_seconds_survive_a_restart_while_unsynced(tmp_path: Path) -> None:
    site = Site(tmp_path, FakeClock(wall=at("2026-11-27 10:00")))
    site.run(60)
    site.store.close()
    clock = FakeClock(wall=0.0, monotonic=5.0)
    again = Site(tmp_path, clock, synced=False)
    again.run(120)
    again.store.close()  # power cut while the clock is still wrong
    clock.jump_wall(at("2026-11-27 12:00") - clock.wall())
    third = Site(tmp_path, clock)
    third.run(60)
    assert third.saved()["2026-11-27"]["up_s"] == 240


def test_clock_jump_backwards_never_counts_a_second_twice(tmp_path: Path) -> None:
    site = Site(tmp_path, FakeClock(wall=at("2026-11-27 23:50")))
    site.run(1200)  # to 00:10 on the 28th
    site.clock.jump_wall(-1800)  # back to 23:40 on the 27th: those minutes were already counted
    site.run(1200)
    saved = site.saved()
    assert sum(day["up_s"] for day in saved.values()) == 2400
    assert all(day["up_s"] <= 86400 for day in saved.values())
    assert saved["2026-11-27"]["up_s"] == 600  # not 600 + the replayed 20 minutes


def test_ninety_days_kept_newest_last(tmp_path: Path) -> None:
    site = Site(tmp_path, FakeClock(wall=at("2026-08-01 12:00")))
    site.run(100 * 86400, step=3 * 3600)
    days = site.retained["days"]
    assert len(days) == 90 and days[-1]["date"] == "2026-11-09" and days[0]["date"] == "2026-08-12"
    assert list(site.saved()) == [day["date"] for day in days]


def test_telemetry_not_queued_while_disconnected(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.apply(site.core.handle(io.BrokerDisconnected("x")))
    assert published(site.core.handle(io.TelemetryDue({})), "/telemetry") == []


def test_damaged_ledger_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "uptime.db").write_bytes(b"this is not a database" * 100)
    store = LedgerStore(tmp_path)
    store.open()
    assert store.load()[0] == []
    assert list(tmp_path.glob("uptime.db.broken-*"))


def test_publication_can_be_thinned_but_reconnect_always_publishes(tmp_path: Path) -> None:
    site = Site(tmp_path, uptime_publish_s=900.0)
    published_at = []
    for _ in range(30):
        site.clock.advance(60)
        if published(site.apply(site.core.handle(io.CheckpointDue())), "/uptime"):
            published_at.append(site.clock.monotonic())
    assert len(published_at) == 2 and published_at[1] - published_at[0] == 900
    assert published(site.apply(site.core.handle(io.BrokerConnected())), "/uptime")
    assert site.saved()["2026-11-27"]["up_s"] == 1800  # saving is not thinned


def test_cpu_temperature_only_from_a_cpu_zone(tmp_path: Path) -> None:
    from appliance.adapters import sysinfo  # noqa: PLC0415

    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "type").write_text("acpitz\n")
    (tmp_path / "thermal_zone0" / "temp").write_text("27800\n")
    assert sysinfo.cpu_temp_c(tmp_path) is None
    (tmp_path / "thermal_zone1").mkdir()
    (tmp_path / "thermal_zone1" / "type").write_text("cpu-thermal\n")
    (tmp_path / "thermal_zone1" / "temp").write_text("54312\n")
    assert sysinfo.cpu_temp_c(tmp_path) == 54.3
