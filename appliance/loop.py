"""The one event loop that owns the daemon's state.

Other threads (paho, gpiozero, libvlc, the control socket) only `post` to it. Timers run on it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import time
from collections.abc import Callable
from typing import Any

from appliance.core.io import Unhandled

log = logging.getLogger(__name__)


def strict_from_environment() -> bool:
    """APPLIANCE_STRICT=1 (the test suite sets it) turns a missing event or effect handler into a crash."""
    return os.environ.get("APPLIANCE_STRICT") == "1"


class EventLoop:
    def __init__(self, dispatch: Callable[[Any], None], monotonic: Callable[[], float] = time.monotonic,
                 strict: bool | None = None) -> None:
        self._dispatch = dispatch
        self.strict = strict_from_environment() if strict is None else strict
        self._monotonic = monotonic
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._deadline_source: Callable[[], float | None] = lambda: None
        self._on_deadline: Callable[[], None] = lambda: None
        self._running = False

    def post(self, item: Any) -> None:
        """Thread-safe: queue an event (or a zero-argument callable) for the loop thread."""
        self._queue.put(item)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Loop thread only."""
        heapq.heappush(self._timers, (self._monotonic() + delay_s, next(self._sequence), callback))

    def call_every(self, interval_s: float, callback: Callable[[], None]) -> None:
        def repeat() -> None:
            callback()
            self.call_later(interval_s, repeat)

        self.call_later(interval_s, repeat)

    def watch_deadline(self, source: Callable[[], float | None], on_deadline: Callable[[], None]) -> None:
        """Ask `source` for the next monotonic deadline after every step; call `on_deadline` when it passes."""
        self._deadline_source = source
        self._on_deadline = on_deadline

    def stop(self) -> None:
        self.post(_STOP)

    def run(self) -> None:
        self._running = True
        while self._running:
            timeout = self._timeout()
            try:
                item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            if item is _STOP:
                self._running = False
                break
            if item is not None:
                self._guarded(item if callable(item) else lambda item=item: self._dispatch(item), item)
            self._run_due()

    def _timeout(self) -> float | None:
        deadlines = [self._timers[0][0]] if self._timers else []
        core_deadline = self._deadline_source()
        if core_deadline is not None:
            deadlines.append(core_deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self._monotonic())

    def _guarded(self, work: Callable[[], None], what: object) -> None:
        """Events and timers alike: a failure is logged and the loop goes on (the site stays up)."""
        try:
            work()
        except Unhandled:
            if self.strict:
                raise  # a programming error: in tests it must fail loudly, not scroll past in a log
            log.exception("no handler for %r; the loop goes on", type(what).__name__)
        except Exception:  # noqa: BLE001 - one bad event must not take the site offline
            log.exception("handling %r failed; the loop goes on", type(what).__name__)

    def _run_due(self) -> None:
        now = self._monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            self._guarded(callback, callback)
        core_deadline = self._deadline_source()
        if core_deadline is not None and core_deadline <= self._monotonic():
            self._guarded(self._on_deadline, "deadline")


_STOP = object()
