"""The audio path's health: the audio engine and its echo canceller (`audio.echo = aec`), or the
ALSA microphone (the other modes), reported as `health.audio` in words a technician can act on.

A watcher thread asks every `PERIOD_S` (PipeWire's `pactl`, a few ms; never on the event loop) and
posts `HealthReport("audio", ...)` when the answer changes. In `aec` mode it also keeps the echo
canceller running (`echo_canceller.py`): started once the engine answers with a microphone, restarted
after an engine restart, a new microphone or speaker, or a newly measured echo delay. When the path
works again after an outage, the camera is told (`on_change`), so an uplink that fell back to a
silent track captures the microphone again without a command.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.adapters.audio_checks import (
    PACTL_TIMEOUT_S,
    EngineStatus,
    audio_health,
    chosen_device,
    engine_health,
    engine_status,
)
from appliance.adapters.echo_canceller import CancellerProcess, config_dirs
from appliance.core.io import HealthReport
from appliance.media.audio_route import uses_engine

log = logging.getLogger("appliance.audio")

PERIOD_S = 2.0
CANCELLER_START_S = 3.0  # a canceller's nodes appear within ~0.2 s; more means it failed


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
        self.canceller = (CancellerProcess(*config_dirs(config))
                          if uses_engine(config) and config["camera"]["backend"] != "none" else None)

    def open(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="audio-health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PACTL_TIMEOUT_S * 3 + 2)

    def _check(self) -> tuple[str, str]:
        if self.canceller is None:
            return audio_health(self.config, self._run)
        status = engine_status(self._run)
        if status.answers and status.microphones and self._keep_canceller(status):
            status = self._await(lambda status: status.canceller_loaded)
        return engine_health(status, self.config["paths"]["state_dir"])

    def _keep_canceller(self, status: EngineStatus) -> bool:
        """Start or restart the canceller when it is not what it should be; True if it was started."""
        assert self.canceller is not None
        current = self.canceller.targets
        if current is not None and current.microphone in status.microphones and (
                current.speaker in status.speakers or (current.speaker is None and not status.speakers)):
            wanted = self.canceller.wanted(current.microphone, current.speaker)  # the delay as now measured
        else:  # first start, or its microphone or speaker went away: the engine's choice now
            wanted = self.canceller.wanted(chosen_device(self._run, "source", status.microphones),
                                           chosen_device(self._run, "sink", status.speakers))
        if not self.canceller.needs_start(wanted, status.canceller_loaded) or not self.canceller.may_start():
            return False
        if self.canceller.child is not None:
            # The old one's nodes must be gone first: else they would pass for the new one's.
            self.canceller.stop()
            self._await(lambda status: not status.canceller_loaded)
        self.canceller.start(wanted)
        return True

    def _await(self, done: Callable[[EngineStatus], bool]) -> EngineStatus:
        status = engine_status(self._run)
        deadline = time.monotonic() + CANCELLER_START_S
        while not done(status) and time.monotonic() < deadline and not self._stop.wait(0.1):
            status = engine_status(self._run)
        return status

    def _watch(self) -> None:
        while True:
            try:
                health = self._check()
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
                if self.canceller is not None:
                    self.canceller.stop()
                return
