"""Runs the self-test inside the daemon without blocking its event loop.

Loop thread only. Blocking checks run on one worker thread that posts each result back as a
callable; the broker round trip is polled by timers; the panel check is a state: while it waits,
button presses go to the self-test instead of the state machine. The watchdog keeps being pinged.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from appliance import selftest
from appliance.adapters import sysinfo
from appliance.adapters.mqtt import encode
from appliance.core import led
from appliance.core.clock import rfc3339
from appliance.core.io import ButtonUp
from appliance.core.machine import IN_MEETING, JOINING, LEAVING
from appliance.selftest import result

if TYPE_CHECKING:
    from appliance.adapters.control import ControlRequest
    from appliance.daemon import Daemon

log = logging.getLogger("appliance.selftest")

BROKER_TIMEOUT_S = 5.0
RESULT_SHOWN_S = 20.0


class SelftestRunner:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.run: selftest.SelftestRun | None = None
        self._request: ControlRequest | None = None
        self._generation = 0

    @property
    def language(self) -> str:
        return self.daemon.config["display"]["language"]

    def start(self, interactive: bool, request: ControlRequest | None = None) -> str | None:
        """Begin a run; return why not, or None. `request` (local CLI) is answered when it ends."""
        d = self.daemon
        if self.run is not None:
            return "a self-test is already running"
        if d.core.state in (JOINING, IN_MEETING, LEAVING):
            return f"not during a meeting (state {d.core.state}); leave the meeting first"
        self._generation += 1
        run = selftest.SelftestRun(d.core.settings.site_id, interactive, d.clock.monotonic(), self._finished)
        self.run, self._request = run, request
        log.info("self-test started (%s)", "interactive" if interactive else "unattended")
        self._screen("running")
        self._start_worker(run)
        self._check_display(run)
        self._check_broker(run)
        if interactive:
            run.waiting_press = True
            self._screen("press_now")
            d.panel.show(led.TEST)
            d.loop.call_later(selftest.PANEL_WAIT_S, lambda: run.record(
                "panel", result(False, f"no press within {selftest.PANEL_WAIT_S:g} s")))
        else:
            run.record("panel", result(None, "needs a person: run `appliance selftest --interactive` at the site"))
        return None

    def take_button(self, event: Any) -> bool:
        """While the panel check waits, a press belongs to the self-test, not to the meeting."""
        run = self.run
        if run is None or not run.waiting_press:
            return False
        if isinstance(event, ButtonUp):
            elapsed = run.elapsed(self.daemon.clock.monotonic())
            run.record("panel", result(True, f"button pressed after {elapsed:.1f} s; LED test pattern shown"))
        return True

    # --- the checks -----------------------------------------------------------------------------
    def _start_worker(self, run: selftest.SelftestRun) -> None:
        d = self.daemon
        state_dir = d.config["paths"]["state_dir"]
        camera_backend, camera, camera_health = d.config["camera"]["backend"], d.camera, d.core.health["camera"]
        audio_device = d.config["camera"]["audio_device"]
        checks = [
            ("clock", lambda: selftest.check_clock(sysinfo.clock_synced())),
            ("power", lambda: selftest.check_power(sysinfo.throttled())),
            ("disk", lambda: selftest.check_disk(state_dir, sysinfo.disk_free_mb(state_dir))),
            ("camera", lambda: selftest.check_camera(camera_backend, camera, camera_health)),
            ("audio", lambda: selftest.check_audio(audio_device)),
        ]

        def work() -> None:
            for name, check in checks:
                outcome = selftest.timed(check)
                d.loop.post(lambda name=name, outcome=outcome: run.record(name, outcome))

        threading.Thread(target=work, name="selftest", daemon=True).start()

    def _check_display(self, run: selftest.SelftestRun) -> None:
        d = self.daemon
        backend = d.config["display"]["backend"]
        if backend == "none":
            run.record("display", result(None, "disabled (display.backend = none)"))
        elif d.display is None:
            run.record("display", result(False, f"display backend {backend} unavailable"))
        else:
            d.display.show_screen("selftest", {"card": True, "site_name": d.core.settings.site_name})
            health = d.core.health["display"]
            run.record("display", result(health == "ok", "test card shown" if health == "ok" else f"display is {health}"))

    def _check_broker(self, run: selftest.SelftestRun) -> None:
        d = self.daemon
        if not d.core.broker_connected:
            run.record("broker", result(False, f"not connected to {d.mqtt.url}"))
            return
        probe = {"v": 1, "site": d.core.settings.site_id, "at": rfc3339(d.clock.wall()), "type": "selftest.started",
                 "interactive": run.interactive}
        # A QoS 1 publish is answered by the broker's PUBACK: that is the round trip.
        info = d.mqtt.client.publish(d.core.topics.event, encode(probe), qos=1)
        sent = d.clock.monotonic()

        def poll() -> None:
            waited = d.clock.monotonic() - sent
            if info.is_published():
                run.record("broker", result(True, f"round trip {waited * 1000:.0f} ms"))
            elif waited > BROKER_TIMEOUT_S:
                run.record("broker", result(False, f"no answer from the broker within {BROKER_TIMEOUT_S:g} s"))
            else:
                d.loop.call_later(0.02, poll)

        d.loop.call_later(0.0, poll)

    # --- the end --------------------------------------------------------------------------------
    def _finished(self, run: selftest.SelftestRun) -> None:
        d = self.daemon
        payload = run.payload(rfc3339(d.clock.wall()))
        lines = selftest.summary_lines(run.checks, self.language)
        d.mqtt.publish(d.core.topics.selftest, payload, retain=True)
        log.info("self-test %s: %s", "passed" if payload["ok"] else "FAILED", "; ".join(lines))
        self._screen("all_ok" if payload["ok"] else "failed", lines)
        d.panel.show(led.PATTERNS[d.core.status()["led"]])
        generation = self._generation
        d.loop.call_later(RESULT_SHOWN_S, lambda: self._restore(generation))
        if self._request is not None:
            self._request.reply({"ok": True, "result": payload, "lines": lines, "language": self.language})
        self.run, self._request = None, None

    def _restore(self, generation: int) -> None:
        if generation == self._generation and self.run is None:
            self.daemon._execute(self.daemon.core.redraw())

    def _screen(self, headline: str, lines: list[str] | None = None) -> None:
        display = self.daemon.display
        if display is None:
            return
        texts = selftest.TEXTS.get(self.language, selftest.TEXTS["id"])
        info = {"site_name": self.daemon.core.settings.site_name, "title": texts["title"],
                "headline": texts[headline], "lines": lines or [], "hint": texts["press_hint"].format(s=30)}
        display.show_screen("selftest", info)
