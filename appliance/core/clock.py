"""Clocks the core is given, never reads itself: wall time for protocol checks, monotonic for durations."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the Unix epoch (UTC); may jump when NTP corrects it."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never jumps."""


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock tests move by hand, so hours of behaviour run in milliseconds."""

    def __init__(self, wall: float = 1_795_744_800.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds

    def jump_wall(self, seconds: float) -> None:
        self._wall += seconds


def rfc3339(epoch: float) -> str:
    """UTC, millisecond precision, with the `Z` the contract asks for."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 time with an explicit offset; naive times are refused (ambiguous)."""
    if not isinstance(text, str) or len(text) > 40:
        raise ValueError("not an RFC 3339 time")
    normalized = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    moment = datetime.fromisoformat(normalized)
    if moment.tzinfo is None:
        raise ValueError("time has no UTC offset")
    return moment.timestamp()
