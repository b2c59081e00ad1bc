"""The audio path's health: the audio engine and its echo canceller (`audio.echo = aec`), or the
ALSA microphone (the other modes), reported as `health.audio` in words a technician can act on.

A watcher thread asks every `PERIOD_S` (PipeWire's `pactl`, a few ms; never on the event loop) and
posts `HealthReport("audio", ...)` when the answer changes. When the engine comes back after an
outage, the camera is told (`on_change`), so an uplink that fell back to a silent track captures
the microphone again without a command.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from appliance.adapters.audio_checks import PACTL_TIMEOUT_S, audio_health
from appliance.core.io import HealthReport

log = logging.getLogger("appliance.audio")

PERIOD_S = 2.0


class AudioEngine:
    def __init__(self, config: Any, post: Callable[[Any], None], *, run: Callable[..., Any] = subprocess.run,
                 period_s: float = PERIOD_S) -> None:
        self.config = config
        self._post = post
        self._run = run
        self.period_s = period_s
        self.ok: bool | None = None  # None until the first check: callers then simply try the engine
        self.health: tuple[str, str] | None = None
        self.on_change: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="audio-health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PACTL_TIMEOUT_S + 1)

    def _watch(self) -> None:
        while True:
            try:
                health = audio_health(self.config, self._run)
            except Exception as exc:  # noqa: BLE001 - a broken check is an error to report, not a dead watcher
                health = ("error", f"the audio check failed: {type(exc).__name__}: {exc}")
            if health != self.health:
                before = self.ok
                self.health = health
                self.ok = health[0] in ("ok", "disabled")
                (log.info if self.ok else log.warning)("audio %s: %s", *health)
                self._post(HealthReport("audio", *health))
                if before is not None and before != self.ok:
                    for callback in list(self.on_change):
                        callback()
            if self._stop.wait(self.period_s):
                return
