"""The daemon: builds the core and its adapters from the configuration and runs the event loop."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.adapters import sysinfo
from appliance.adapters.control import ControlRequest, ControlServer
from appliance.adapters.ledger import LedgerStore
from appliance.adapters.media import BackendUnavailable, create_camera, create_display
from appliance.adapters.mqtt import MqttLink
from appliance.adapters.panel import Panel
from appliance.adapters.storage import ReplayStore
from appliance.adapters.systemd import Notifier
from appliance.config import Config
from appliance.core import io
from appliance.core.clock import Clock, SystemClock
from appliance.core.io import ButtonDown, ButtonUp, HealthReport
from appliance.core.machine import ApplianceCore, CoreSettings
from appliance.core.protocol import CommandPolicy
from appliance.core.signing import public_key_from_base64
from appliance.core.uptime import UptimeLedger
from appliance.loop import EventLoop
from appliance.provision import ERROR_NAME as PROVISION_ERROR_NAME
from appliance.selftest_runner import SelftestRunner

log = logging.getLogger("appliance")

CLOCK_CHECK_INTERVAL_S = 60.0
CHECKPOINT_INTERVAL_S = 60.0  # the contract: at most one interval of up time lost to a power cut
DEFAULT_PRESS_S = 0.2
MAX_PRESS_S = 60.0


def read_provision_error(state_dir: str) -> tuple[str, ...]:
    """What appliance-provision.service wrote when it refused the boot partition's site file."""
    try:
        text = (Path(state_dir) / PROVISION_ERROR_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())[:8]


class Daemon:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.loop = EventLoop(self._dispatch, self.clock.monotonic)
        post = self.loop.post
        security = config["security"]
        public_key = security["console_public_key"]
        settings = CoreSettings(
            site_id=config["site"]["id"],
            site_kind=config["site"]["kind"],
            site_name=config["site"]["name"],
            policy=CommandPolicy(
                site_id=config["site"]["id"],
                public_key=public_key_from_base64(public_key) if public_key else None,
                allow_unsigned=security["allow_unsigned"],
                allowed_media_hosts=tuple(security["allowed_media_hosts"]),
                max_command_age_s=float(security["max_command_age_s"]),
            ),
            topic_prefix=config["broker"]["topic_prefix"],
            hold_s=float(config["panel"]["hold_s"]),
            camera_enabled=config["camera"]["backend"] != "none",
            display_enabled=config["display"]["backend"] != "none",
            version=__version__,
            boot_id=sysinfo.boot_id(),
            timezone=config["time"]["timezone"],
            # Not a configuration key yet (see docs/operations.md); every checkpoint until it is.
            uptime_publish_s=float(config["telemetry"]["uptime_publish_s"]),
        )
        self.replay_store = ReplayStore(config["paths"]["state_dir"])
        self.ledger_store = LedgerStore(config["paths"]["state_dir"])
        try:
            self.ledger_store.open()
            days, ledger_state = self.ledger_store.load()
        except sqlite3.Error as exc:
            raise OSError(f"cannot open the uptime ledger {self.ledger_store.path}: {exc}") from exc
        self.core = ApplianceCore(settings, self.clock, self.replay_store.load(self.clock.wall()),
                                  uptime=UptimeLedger(settings.timezone, days, ledger_state))
        self.notifier = Notifier()
        self.panel = Panel(config["panel"]["backend"], config["panel"]["button_pin"], config["panel"]["led_pin"], post)
        self.camera = self._backend(create_camera, "camera")
        self.display = self._backend(create_display, "display")
        self.mqtt = MqttLink(site_id=settings.site_id, topics=self.core.topics, broker=config["broker"],
                             password=config.broker_password(), post=post)
        self.control = ControlServer(config["paths"]["control_socket"], post)
        self._clock_synced: bool | None = None
        self.selftest = SelftestRunner(self)
        self.debug_hooks = os.environ.get("APPLIANCE_DEBUG_HOOKS") == "1"

    def _backend(self, factory: Any, component: str) -> Any:
        try:
            return factory(self.config, self.loop.post)
        except BackendUnavailable as exc:
            log.error("%s: %s", component, exc)
            self.loop.post(HealthReport(component, "missing", str(exc)))
            return None

    # --- life cycle -----------------------------------------------------------------------------
    def run(self) -> int:
        if self.core.settings.policy.allow_unsigned:
            log.warning("SECURITY: security.allow_unsigned = true; unsigned commands are accepted. Development only!")
        os.makedirs(self.config["paths"]["state_dir"], exist_ok=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.loop.stop())
        self.control.open()
        self.panel.open()
        for backend in (self.camera, self.display):
            if backend is not None:
                backend.open()
        # After the backends' first health reports, so the first LED pattern is already the true one.
        self.loop.post(lambda: self._execute(self.core.start()))
        problems = read_provision_error(self.config["paths"]["state_dir"])
        if problems:
            self.loop.post(io.ProvisionRejected(problems))
        self.mqtt.start()
        self.loop.watch_deadline(self.core.next_deadline, lambda: self._execute(self.core.tick()))
        self.loop.call_every(float(self.config["telemetry"]["interval_s"]), self._telemetry)
        self.loop.call_every(CHECKPOINT_INTERVAL_S, lambda: self._execute(self.core.handle(io.CheckpointDue())))
        self.loop.call_later(0, self._check_clock)
        self.loop.call_every(CLOCK_CHECK_INTERVAL_S, self._check_clock)
        if self.notifier.watchdog_interval_s:
            self.loop.call_every(self.notifier.watchdog_interval_s, self.notifier.watchdog)
        self.notifier.ready()
        log.info("site %s ready (version %s, control socket %s)", self.core.settings.site_id, __version__,
                 self.config["paths"]["control_socket"])
        try:
            self.loop.run()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self._execute(self.core.handle(io.CheckpointDue()))  # a clean stop loses no up time at all
        self.ledger_store.close()
        self.control.close()
        for backend in (self.camera, self.display):
            if backend is not None:
                backend.close()
        self.mqtt.stop()
        self.panel.close()
        log.info("stopped")

    # --- the loop thread ------------------------------------------------------------------------
    def _dispatch(self, item: Any) -> None:
        if isinstance(item, (ButtonDown, ButtonUp)) and self.selftest.take_button(item):
            return
        if isinstance(item, ControlRequest):
            self._control(item)
        else:
            self._execute(self.core.handle(item))

    def _execute(self, effects: list[Any]) -> None:
        for effect in effects:
            try:
                self._perform(effect)
            except Exception:  # noqa: BLE001 - one failing adapter must not stop the loop
                log.exception("effect %s failed", type(effect).__name__)

    def _perform(self, effect: Any) -> None:
        if isinstance(effect, io.Publish):
            self.mqtt.publish(effect.topic, effect.payload, effect.retain)
        elif isinstance(effect, io.SetLed):
            self.panel.show(effect.pattern)
        elif isinstance(effect, io.ShowScreen):
            if self.display is not None:
                self.display.show_screen(effect.screen, effect.info)
        elif isinstance(effect, io.StartUplink) and self.camera is not None:
            self.camera.start(effect.url)
        elif isinstance(effect, io.StopUplink) and self.camera is not None:
            self.camera.stop()
        elif isinstance(effect, io.StartProgram) and self.display is not None:
            self.display.start_program(effect.url)
        elif isinstance(effect, io.StopProgram) and self.display is not None:
            self.display.stop_program()
        elif isinstance(effect, io.RememberCommand):
            self.replay_store.remember(effect.command_id, effect.expires_at)
        elif isinstance(effect, io.NotifyStatus):
            self.notifier.status(effect.text)
        elif isinstance(effect, io.SaveUptime):
            self.ledger_store.save(list(effect.days), effect.state, effect.pending, list(effect.keep))
        elif isinstance(effect, io.RunSelftest):
            refusal = self.selftest.start(effect.interactive)
            if refusal:
                log.warning("self-test requested over MQTT refused: %s", refusal)
        elif isinstance(effect, io.Log):
            log.log(logging.getLevelName(effect.level.upper()), effect.message)

    def _telemetry(self) -> None:
        self._execute(self.core.handle(io.TelemetryDue(sysinfo.telemetry_sample(self.config["paths"]["state_dir"]))))

    def _check_clock(self) -> None:
        synced = sysinfo.clock_synced()
        if synced != self._clock_synced:
            self._clock_synced = synced
            self._execute(self.core.handle(HealthReport("clock", "synced" if synced else "unsynced")))

    def _control(self, request: ControlRequest) -> None:
        command = request.body["cmd"]
        if command == "status":
            request.reply({"ok": True, "status": self.core.status()})
        elif command == "version":
            request.reply({"ok": True, "version": __version__, "site": self.core.settings.site_id})
        elif command in ("join", "leave"):
            outcome = self.core.local(command)
            self._execute(outcome.effects)
            reply = {"ok": outcome.ok, "message": outcome.message, "state": self.core.state}
            request.reply(reply if outcome.ok else {**reply, "error": outcome.message})
        elif command == "press":
            self._press(request)
        elif command == "selftest":
            refusal = self.selftest.start(bool(request.body.get("interactive")), request)
            if refusal:
                request.reply({"ok": False, "error": refusal})
        elif command == "debug.hang" and self.debug_hooks:
            # Lets tests prove that a stuck loop stops the systemd watchdog pings.
            time.sleep(float(request.body.get("seconds", 1)))
            request.reply({"ok": True})
        else:
            request.reply({"ok": False, "error": f"unknown request {command!r}"})

    def _press(self, request: ControlRequest) -> None:
        try:
            seconds = float(request.body.get("hold", DEFAULT_PRESS_S))
        except (TypeError, ValueError):
            seconds = -1.0
        if not 0 < seconds <= MAX_PRESS_S:
            request.reply({"ok": False, "error": f"--hold must be between 0 and {MAX_PRESS_S:g} seconds"})
            return
        # A mock pin is driven like a finger, through gpiozero; a real one cannot be, so the edges are posted.
        if not self.panel.press(seconds):
            self._dispatch(ButtonDown())
            self.loop.call_later(seconds, lambda: self.loop.post(ButtonUp()))

        def answer() -> None:
            request.reply({"ok": True, "state": self.core.state, "message": f"pressed for {seconds:g} s"})

        # Answer once the release has been handled, so the caller sees the state it caused.
        self.loop.call_later(seconds + 0.05, lambda: self.loop.post(answer))
