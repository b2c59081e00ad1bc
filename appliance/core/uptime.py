"""The uptime ledger's accounting: which local day each second of up time belongs to. Pure code.

Durations come only from the monotonic clock; the wall clock is used only to place them on days.
Time since the last checkpoint is kept as monotonic segments (with the connected / in-meeting flags
of the moment) and placed on days at the checkpoint, back-computed from the wall clock *then*:
`wall_of(m) = wall_now - (mono_now - m)`. So a wall-clock jump moves at most the one interval in
which it happened, and that interval lands where the corrected clock says it was.

Wall-clock jumps (see docs/operations.md):
- forwards (NTP correcting a Pi that booted at an old time): nothing is lost or counted twice; the
  interval around the jump is placed relative to the new time.
- backwards: a second is never counted twice. `high_water` is the latest wall moment already
  placed; a batch that would start before it is shifted to start at it, until the clock catches up.
  A synchronised clock that is more than a day behind `high_water` means the earlier time was wrong
  (a clock in the future): then the ledger trusts the clock and resets `high_water`.
- while the clock is not synchronised and reads earlier than `high_water` (a Pi without RTC at
  1970, or fake-hwclock's saved time), nothing is placed: the seconds wait ("pending", persisted)
  until the clock is synchronised or passes `high_water`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

MAX_DAYS = 90
TRUST_BACKWARDS_S = 86400.0
FIELDS = ("up_s", "connected_s", "in_meeting_s", "meetings_joined", "boots")
COUNTERS = ("meetings_joined", "boots")


@dataclass
class Day:
    date: str
    up_s: float = 0.0
    connected_s: float = 0.0
    in_meeting_s: float = 0.0
    meetings_joined: int = 0
    boots: int = 0

    def as_message(self) -> dict[str, object]:
        values = asdict(self)
        for name in ("up_s", "connected_s", "in_meeting_s"):
            values[name] = int(round(values[name]))
        return values


@dataclass
class LedgerState:
    """What must survive a restart besides the days: see the module docstring."""

    high_water: float = 0.0
    last_boot_id: str = ""
    carry: dict[str, float] | None = None  # seconds and counts not yet placed on a day


class UptimeLedger:
    def __init__(self, timezone: str, days: list[Day] | None = None, state: LedgerState | None = None,
                 max_days: int = MAX_DAYS) -> None:
        self.tz = ZoneInfo(timezone)
        self.timezone = timezone
        self.max_days = max_days
        self.days: dict[str, Day] = {day.date: day for day in days or []}
        self.state = state or LedgerState()
        self._segments: list[list[float | bool]] = []  # [mono_start, mono_end, connected, in_meeting]
        self._marks: list[tuple[float, str]] = []
        self._mono: float | None = None
        self._flags = (False, False)

    # --- feeding ----------------------------------------------------------------------------------
    def start(self, mono: float, boot_id: str, connected: bool = False, in_meeting: bool = False) -> None:
        """The daemon started. A boot is counted once per kernel boot id, not per daemon restart."""
        self._mono = mono
        self._flags = (connected, in_meeting)
        if boot_id != self.state.last_boot_id:
            self._marks.append((mono, "boots"))
            self.state.last_boot_id = boot_id

    def observe(self, mono: float, connected: bool, in_meeting: bool) -> None:
        if (connected, in_meeting) != self._flags:
            self._close(mono)
            self._flags = (connected, in_meeting)

    def count(self, mono: float, name: str) -> None:
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}")
        self._marks.append((mono, name))

    def _close(self, mono: float) -> None:
        if self._mono is None:
            raise RuntimeError("ledger not started")
        if mono <= self._mono:
            return
        last = self._segments[-1] if self._segments else None
        if last is not None and last[1] == self._mono and (last[2], last[3]) == self._flags:
            last[1] = mono
        else:
            self._segments.append([self._mono, mono, *self._flags])
        self._mono = mono

    # --- placing on days --------------------------------------------------------------------------
    def checkpoint(self, mono: float, wall: float, synced: bool) -> set[str]:
        """Place everything since the last checkpoint on days; return the dates that changed."""
        self._close(mono)
        if not self._segments and not self._marks and not self.state.carry:
            return set()
        batch_start = min([seg[0] for seg in self._segments] + [m for m, _ in self._marks] + [mono])
        offset = wall - mono
        start_wall = batch_start + offset
        high = self.state.high_water
        if start_wall < high:
            if synced and high - start_wall > TRUST_BACKWARDS_S:
                high = self.state.high_water = 0.0
            elif not synced:
                return set()  # an old, unsynchronised clock: wait
        shift = max(0.0, high - start_wall)
        changed: set[str] = set()
        if self.state.carry:
            changed |= self._add_lump(start_wall + shift, self.state.carry)
            self.state.carry = None
        for begin, end, connected, in_meeting in self._segments:
            changed |= self._add_span(begin + offset + shift, end + offset + shift,  # type: ignore[operator]
                                      bool(connected), bool(in_meeting))
        for at, name in self._marks:
            day = self._day(at + offset + shift)
            setattr(day, name, getattr(day, name) + 1)
            changed.add(day.date)
        self.state.high_water = max(self.state.high_water, mono + offset + shift)
        self._segments, self._marks = [], []
        self._trim()
        return {date for date in changed if date in self.days}

    def pending(self) -> dict[str, float]:
        """Everything not yet on a day (carry + segments + marks), to persist while the clock is wrong."""
        totals = dict.fromkeys(FIELDS, 0.0)
        for name, value in (self.state.carry or {}).items():
            totals[name] += value
        for begin, end, connected, in_meeting in self._segments:
            span = float(end) - float(begin)
            totals["up_s"] += span
            totals["connected_s"] += span if connected else 0.0
            totals["in_meeting_s"] += span if in_meeting else 0.0
        for _, name in self._marks:
            totals[name] += 1
        return {name: value for name, value in totals.items() if value}

    def messages_days(self) -> list[dict[str, object]]:
        return [self.days[date].as_message() for date in sorted(self.days)][-self.max_days:]

    def _day(self, wall: float) -> Day:
        date = datetime.fromtimestamp(wall, self.tz).date().isoformat()
        if date not in self.days:
            self.days[date] = Day(date)
        return self.days[date]

    def _add_span(self, begin: float, end: float, connected: bool, in_meeting: bool) -> set[str]:
        changed = set()
        while end > begin:
            local = datetime.fromtimestamp(begin, self.tz)
            midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), self.tz).timestamp()
            chunk = min(end, midnight) - begin
            day = self._day(begin)
            day.up_s += chunk
            day.connected_s += chunk if connected else 0.0
            day.in_meeting_s += chunk if in_meeting else 0.0
            changed.add(day.date)
            begin += chunk
        return changed

    def _add_lump(self, wall: float, totals: dict[str, float]) -> set[str]:
        day = self._day(wall)
        for name in FIELDS:
            value = totals.get(name, 0)
            setattr(day, name, getattr(day, name) + (int(value) if name in COUNTERS else float(value)))
        return {day.date}

    def _trim(self) -> None:
        for date in sorted(self.days)[:-self.max_days]:
            del self.days[date]
