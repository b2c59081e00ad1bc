"""`appliance run` with no valid configuration: no site to run, so no core; the screen and the LED
say what to do while the configuration is checked again (issue 15, finding 3)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from appliance import __version__
from appliance.adapters.control import ControlRequest, ControlServer
from appliance.adapters.media import BackendUnavailable, create_display
from appliance.adapters.systemd import Notifier
from appliance.config import Config
from appliance.core import io
from appliance.core.clock import rfc3339
from appliance.core.messages import problem_text
from appliance.core.presentation import NOT_PROVISIONED, NOT_PROVISIONED_LED
from appliance.daemon import Factory, panel_from_config, read_provision_error
from appliance.loop import EventLoop

log = logging.getLogger("appliance")

NOT_PROVISIONED_RECHECK_S = 5.0
ConfigCheck = Callable[[], tuple[Config | None, list[str]]]


class NotProvisioned:
    """What `appliance run` does under systemd when the configuration is missing or invalid (a new
    card, a site file never accepted): instead of exiting 2, for the unit to restart it five times and
    reboot, forever, with a dark screen (issue 15, finding 3), it shows the person at the site what to
    do and waits.

    The not-provisioned screen with the first problems (the boot partition's rejected site file first,
    from provision-error.txt, then the configuration's own), the LED double-blinking, READY=1 and a
    STATUS= for systemd, watchdog pings, and `appliance status` on the control socket. Every
    `recheck_s` it asks `check` again; `run()` returns the configuration once it is valid (the caller
    then starts the real daemon), or None when stopped by SIGTERM/SIGINT.

    `fallback` is the site, panel, display, paths and time settings of the configuration files, each
    key only if valid and, from the per-site file, only if a site file may set it (the CLI builds it):
    the screen and the LED work wherever the files allow. No core runs here:
    there is no site, so the screen and the LED below are all there is to decide.
    """

    def __init__(self, fallback: Config, problems: list[str], check: ConfigCheck, *,
                 recheck_s: float = NOT_PROVISIONED_RECHECK_S, panel: Factory | None = None,
                 display: Factory | None = None) -> None:
        self.fallback = fallback
        self.check = check
        self.recheck_s = recheck_s
        self.loop = EventLoop(self._dispatch)
        self.notifier = Notifier()
        self.since = time.time()
        self.problems: list[str] = []
        self.valid: Config | None = None
        self.panel = (panel or panel_from_config)(fallback, self.loop.post)
        try:
            self.display = (display or create_display)(fallback, self.loop.post)
        except BackendUnavailable as exc:
            log.error("display: %s", exc)
            self.display = None
        self.control = ControlServer(fallback["paths"]["control_socket"], self.loop.post)
        self._update(problems)

    def run(self) -> Config | None:
        self.control.open()
        handlers = {signum: signal.signal(signum, lambda *_: self.loop.stop()) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.panel.open()
            self.panel.show(NOT_PROVISIONED_LED)
            if self.display is not None:
                self.display.open()
                self._show()
            self.loop.call_every(self.recheck_s, self._recheck)
            if self.notifier.watchdog_interval_s:
                self.loop.call_every(self.notifier.watchdog_interval_s, self.notifier.watchdog)
            self.notifier.ready()
            self.notifier.status(self._status_line())
            log.error("not provisioned; showing it on the screen and the LED, and checking the configuration "
                      "again every %g s", self.recheck_s)
            self.loop.run()
        finally:
            if self.valid is None:
                self.notifier.stopping()  # with a valid configuration the same process goes on as the site
            if self.display is not None:
                self.display.close()
            self.panel.close()
            self.control.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        return self.valid

    def status(self) -> dict[str, Any]:
        return {"site": None, "state": NOT_PROVISIONED, "since": rfc3339(self.since), "screen": NOT_PROVISIONED,
                "led": NOT_PROVISIONED_LED.name, "version": __version__, "broker_connected": False,
                "problems": list(self.problems)}

    def _problems_with(self, problems: list[str]) -> list[str]:
        rejected = read_provision_error(self.fallback["paths"]["state_dir"])
        return [*rejected[1:], *problems]  # rejected[0] only says that the site file was rejected

    def _update(self, problems: list[str]) -> bool:
        combined = self._problems_with(problems)
        if combined == self.problems:
            return False
        self.problems = combined
        return True

    def _status_line(self) -> str:
        first = self.problems[0] if self.problems else "no configuration"
        return f"not provisioned: {first}"[:200]

    def _show(self) -> None:
        if self.display is not None:
            site = self.fallback["site"]
            # Said in the screen's language (lines read back from provision-error.txt stay as written).
            language = self.fallback["display"]["language"]
            self.display.show_screen(NOT_PROVISIONED, {"problems": [problem_text(line, language) for line in self.problems],
                                                       "site_name": site["name"] or site["id"]})

    def _recheck(self) -> None:
        config, problems = self.check()
        if config is not None:
            log.info("the configuration is valid now; starting the site")
            self.valid = config
            self.loop.stop()
            return
        if self._update(problems):
            for problem in self.problems:
                log.error("%s", problem)
            self._show()
            self.notifier.status(self._status_line())

    def _dispatch(self, item: Any) -> None:
        if isinstance(item, ControlRequest):
            self._control(item)
        elif isinstance(item, io.HealthReport) and item.value in ("missing", "error"):
            log.error("%s is %s: %s", item.component, item.value, item.detail)
        # Everything else (button edges, the display's program status) changes nothing: there is no site.

    def _control(self, request: ControlRequest) -> None:
        command = request.body["cmd"]
        if command == "status":
            request.reply({"ok": True, "status": self.status()})
        elif command == "version":
            request.reply({"ok": True, "version": __version__, "site": None})
        else:
            request.reply({"ok": False, "error": f"{self._status_line()} (fix the configuration; "
                                                 "check it with appliance check-config)"})
