"""The replay memory: command ids this site has taken, kept until they can no longer come back.

An id is forgotten only when its command has expired by *both* clocks: the wall clock (what the
command's `expires_at` means) and the monotonic clock (how long this site has really held it). A
wall clock that jumps forward, by a bad NTP answer or by hand, then forgets nothing: once it is
corrected, an old command is still `replayed`. Nothing is forgotten at all while the clock is not
synchronised. Ids loaded from disk keep the monotonic deadline they were saved with when the site
restarts within the same boot (the monotonic clock runs on across a daemon restart); after a reboot
they get it from the wall clock at start.
"""

from __future__ import annotations

import heapq


class ReplayMemory:
    def __init__(self, saved: dict[str, float | tuple[float, float | None]] | None, wall: float,
                 monotonic: float) -> None:
        """`saved`: id -> expires_at, or id -> (expires_at, held_until) where held_until is a monotonic
        deadline from this same boot (None when it is not known)."""
        self._expires: dict[str, float] = {}
        self._held_until: dict[str, float] = {}  # monotonic: when this site has held the id long enough
        self._heap: list[tuple[float, str]] = []
        for command_id, value in (saved or {}).items():
            expires_at, held_until = value if isinstance(value, tuple) else (value, None)
            self.add(command_id, expires_at, wall, monotonic)
            if held_until is not None:
                self._held_until[command_id] = max(held_until, self._held_until[command_id])

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._expires

    def __len__(self) -> int:
        return len(self._expires)

    def add(self, command_id: str, expires_at: float, wall: float, monotonic: float) -> float:
        """Remember `command_id`; returns its monotonic deadline (worth saving with it)."""
        self._expires[command_id] = expires_at
        self._held_until[command_id] = monotonic + max(0.0, expires_at - wall)
        heapq.heappush(self._heap, (expires_at, command_id))
        return self._held_until[command_id]

    def discard(self, command_id: str) -> None:
        """Take back an id that could not be made durable (the command was not carried out)."""
        self._expires.pop(command_id, None)
        self._held_until.pop(command_id, None)

    def forget_expired(self, wall: float, monotonic: float, clock_trusted: bool) -> list[str]:
        """Drop and return the ids that can no longer be replayed."""
        if not clock_trusted:
            return []
        forgotten = []
        while self._heap and self._heap[0][0] <= wall:
            expires_at, command_id = self._heap[0]
            if self._expires.get(command_id) != expires_at:
                heapq.heappop(self._heap)  # discarded, or remembered again with another expiry
                continue
            if self._held_until[command_id] > monotonic:
                break  # the wall clock says expired, the time really passed does not: keep it
            heapq.heappop(self._heap)
            del self._expires[command_id], self._held_until[command_id]
            forgotten.append(command_id)
        return forgotten

    def snapshot(self) -> dict[str, float]:
        return dict(self._expires)
