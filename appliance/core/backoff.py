"""Exponential back-off with full jitter, so 242 sites do not reconnect in one burst."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        base_s: float = 1.0,
        cap_s: float = 60.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0
        self._rand = rand

    def ceiling(self) -> float:
        return min(self.cap_s, self.base_s * (2 ** min(self.attempts, 32)))

    def next_delay(self) -> float:
        """A delay drawn uniformly from [0, ceiling); the ceiling doubles each call up to the cap."""
        delay = self._rand() * self.ceiling()
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
