"""The daemon: the core, its adapters, and the one event loop that owns them.

Adapters are made from the configuration unless the caller passes factories for them, in
gpiozero's style (`Button(17, pin_factory=...)`): `Daemon(config, mqtt=..., panel=..., camera=...,
display=..., probes=..., clock=...)`. Each factory is called as `factory(config, post)` and gets the
loop's thread-safe `post`. `Daemon.without_broker(config)` runs a whole site with no broker (its
publishes are kept in `daemon.mqtt.published`). `run()` runs in the foreground (the CLI, with
signal handling); `start()` / `stop()` run the loop on a background thread, and `call()`,
`request()` and `post()` reach it safely from other threads.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.adapters import sysinfo
from appliance.adapters.audio import AudioEngine
from appliance.adapters.control import ControlRequest, ControlServer
from appliance.adapters.ledger import LedgerStore
from appliance.adapters.media import BackendUnavailable, create_camera, create_display
from appliance.adapters.mqtt import DetachedLink, MqttLink
from appliance.adapters.panel import Panel
from appliance.adapters.probes import Probes
from appliance.adapters.remote_ops import RemoteOps
from appliance.adapters.storage import ReplayStore
from appliance.adapters.systemd import Notifier
from appliance.adapters.updater import Updater
from appliance.config import Config
from appliance.core import io
from appliance.core.clock import Clock, SystemClock
from appliance.core.machine import ApplianceCore, CoreSettings
from appliance.core.protocol import CommandPolicy
from appliance.core.selftest import result as selftest_result
from appliance.core.signing import public_key_from_base64
from appliance.core.uptime import UptimeLedger
from appliance.loop import EventLoop
from appliance.provision import ERROR_NAME as PROVISION_ERROR_NAME

log = logging.getLogger("appliance")

CLOCK_CHECK_INTERVAL_S = 60.0
CHECKPOINT_INTERVAL_S = 60.0  # the contract: at most one interval of up time lost to a power cut
DEFAULT_PRESS_S = 0.2
MAX_PRESS_S = 60.0
Post = Callable[[Any], None]
Factory = Callable[[Config, Post], Any]


def read_provision_error(state_dir: str) -> tuple[str, ...]:
    """What appliance-provision.service wrote when it refused the boot partition's site file."""
    try:
        text = (Path(state_dir) / PROVISION_ERROR_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())[:8]


def settings_from(config: Config) -> CoreSettings:
    """The core's settings as the configuration gives them."""
    security = config["security"]
    public_key = security["console_public_key"]
    return CoreSettings(
        site_id=config["site"]["id"],
        site_kind=config["site"]["kind"],
        site_name=config["site"]["name"],
        policy=CommandPolicy(
            site_id=config["site"]["id"],
            public_key=public_key_from_base64(public_key) if public_key else None,
            allow_unsigned=security["allow_unsigned"],
            allowed_media_hosts=tuple(security["allowed_media_hosts"]),
            max_command_age_s=float(security["max_command_age_s"]),
            allowed_update_hosts=tuple(config["update"]["allowed_hosts"]) or None,
        ),
        topic_prefix=config["broker"]["topic_prefix"],
        hold_s=float(config["panel"]["hold_s"]),
        camera_enabled=config["camera"]["backend"] != "none",
        display_enabled=config["display"]["backend"] != "none",
        version=__version__,
        boot_id=sysinfo.boot_id(),
        timezone=config["time"]["timezone"],
        uptime_publish_s=float(config["telemetry"]["uptime_publish_s"]),
        language=config["display"]["language"],
        echo_mode=config["audio"]["echo"],
        update_window=config["update"]["window"],
        update_health_timeout_s=float(config["update"]["health_timeout_s"]),
    )


def _mqtt_from_config(config: Config, post: Post, topics: Any) -> MqttLink:
    return MqttLink(site_id=config["site"]["id"], topics=topics, broker=config["broker"],
                    password=config.broker_password(), post=post)


def panel_from_config(config: Config, post: Post) -> Panel:
    panel = config["panel"]
    return Panel(panel["backend"], panel["button_pin"], panel["led_pin"], post, onair_pin=panel["onair_led_pin"])


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None, settings: CoreSettings | None = None,
                 mqtt: Factory | None = None, panel: Factory | None = None, camera: Factory | None = None,
                 display: Factory | None = None, probes: Factory | None = None, audio: Factory | None = None,
                 updater: Factory | None = None, remote_ops: Factory | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.loop = EventLoop(self._dispatch, self.clock.monotonic)
        post = self.loop.post
        settings = settings or settings_from(config)
        state_dir = config["paths"]["state_dir"]
        self.replay_store = ReplayStore(state_dir, settings.boot_id)
        # A full or failing disk never stops start-up: the ledger then lives in memory (health.disk).
        self.ledger_store = LedgerStore(state_dir, post=post)
        self.ledger_store.open()
        days, ledger_state = self.ledger_store.load()
        self.core = ApplianceCore(settings, self.clock, self.replay_store.load(),
                                  uptime=UptimeLedger(settings.timezone, days, ledger_state))
        self.notifier = Notifier()
        self.panel = (panel or panel_from_config)(config, post)
        self.camera = self._backend(camera or create_camera, "camera")
        self.display = self._backend(display or create_display, "display")
        self.probes = (probes or Probes)(config, post)
        self.audio = (audio or AudioEngine)(config, post)
        self.remote_ops = (remote_ops or RemoteOps)(config, post)
        self.updater = (updater or (lambda cfg, post: Updater(cfg, post, version=settings.version)))(config, post)
        if self.camera is not None:  # the uplink picks its microphone input by the engine's health
            self.camera.audio_engine = self.audio
            self.audio.on_change.append(self.camera.audio_changed)
        self.mqtt = mqtt(config, post) if mqtt else _mqtt_from_config(config, post, self.core.topics)
        self.control = ControlServer(config["paths"]["control_socket"], post)
        self._clock_synced: bool | None = None
        self._selftest_requests: list[ControlRequest] = []
        self._thread: threading.Thread | None = None
        self._loop_error: BaseException | None = None  # why a background loop died (strict mode)
        self.debug_hooks = os.environ.get("APPLIANCE_DEBUG_HOOKS") == "1"
        self.effect_handlers: dict[type, Callable[[Any], None]] = {
            io.Publish: lambda e: self.mqtt.publish(e.topic, e.payload, e.retain, e.receipt),
            io.SetLed: lambda e: self.panel.show(e.pattern),
            io.ShowScreen: lambda e: self.display and self.display.show_screen(e.screen, e.info),
            io.StartUplink: lambda e: self.camera and self.camera.start(e.url, microphone_live=e.microphone_live),
            io.SetMicrophone: self._set_microphone,
            io.DuckProgram: lambda e: self.display and self.display.duck_program(e.ducked),
            io.StopUplink: lambda e: self.camera and self.camera.stop(),
            io.StartProgram: lambda e: self.display and self.display.start_program(e.url),
            io.StopProgram: lambda e: self.display and self.display.stop_program(),
            io.RememberCommand: self._remember_command,
            io.NotifyStatus: lambda e: self.notifier.status(e.text),
            io.SaveUptime: lambda e: self.ledger_store.save(list(e.days), e.state, e.pending, list(e.keep)),
            io.RunProbes: lambda e: self.probes.run(e.names),
            io.ProbeCamera: self._probe_camera,
            io.SelftestDone: self._selftest_done,
            io.Log: lambda e: log.log(logging.getLevelName(e.level.upper()), e.message),
            io.FetchUpdate: lambda e: self.updater.fetch(e),
            io.InstallUpdate: lambda e: self.updater.install(e),
            io.RebootForUpdate: lambda e: self.updater.reboot_into(e),
            io.CommitUpdate: lambda e: self.updater.commit(e),
            io.RollBackUpdate: lambda e: self.updater.roll_back(e),
            io.ForgetUpdate: lambda e: self.updater.forget(e),
            io.ReadLogs: lambda e: self.remote_ops.read_logs(e),
            io.TakeScreenshot: self._take_screenshot,
            io.RequestReboot: lambda e: self.remote_ops.reboot(e),
        }

    @classmethod
    def without_broker(cls, config: Config, **links: Any) -> Daemon:
        """A whole site with no broker: nothing arrives, publishes are kept in `daemon.mqtt.published`."""
        return cls(config, mqtt=lambda cfg, post: DetachedLink(), **links)

    def _backend(self, factory: Factory, component: str) -> Any:
        try:
            return factory(self.config, self.loop.post)
        except BackendUnavailable as exc:
            log.error("%s: %s", component, exc)
            self.loop.post(io.HealthReport(component, "missing", str(exc)))
            return None

    # --- life cycle -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run in the foreground until SIGTERM or SIGINT (the CLI's `appliance run`)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.loop.stop())
        self._open()
        try:
            self.loop.run()
        finally:
            self._shutdown()
        return 0

    def start(self) -> Daemon:
        """Open everything and run the loop on a background thread; returns once the site is up."""
        self._open()
        self._thread = threading.Thread(target=self._run_loop, name="appliance-loop", daemon=True)
        self._thread.start()
        self.call(lambda: None)  # the core's start has been handled
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a daemon that `start()` started: the loop ends, then every adapter is closed. Raises
        what killed the loop, if something did (APPLIANCE_STRICT=1 and a missing handler)."""
        if self._thread is None:
            return
        self.loop.stop()
        self._thread.join(timeout)
        self._thread = None
        self._shutdown()
        self._raise_loop_error()

    def _run_loop(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # kept for the caller's thread: call(), request() and stop() raise it
            self._loop_error = exc
            log.exception("the event loop stopped")

    def _raise_loop_error(self) -> None:
        if self._loop_error is not None:
            raise RuntimeError("the daemon's event loop died") from self._loop_error

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def post(self, event: Any) -> None:
        """Thread-safe: hand the loop an event for the core (or a zero-argument callable)."""
        self.loop.post(event)

    def call(self, function: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Thread-safe: run `function` on the loop thread and return its result."""
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def on_loop() -> None:
            try:
                outcome["value"] = function()
            except BaseException as exc:  # handed back to the caller's thread
                outcome["error"] = exc
            done.set()

        self.loop.post(on_loop)
        while not done.wait(min(timeout, 0.05)):
            self._raise_loop_error()
            timeout -= 0.05
            if timeout <= 0:
                raise TimeoutError("the event loop did not answer in time")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def request(self, body: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
        """What the control socket answers to `body` (e.g. {"cmd": "press"}), without the socket."""
        pending = ControlRequest(body)
        self.loop.post(pending)
        reply = pending.wait(timeout)
        self._raise_loop_error()
        return reply

    def status(self) -> dict[str, Any]:
        return self.call(self.core.status)

    def _open(self) -> None:
        if self.core.settings.policy.allow_unsigned:
            log.warning("SECURITY: security.allow_unsigned = true; unsigned commands are accepted. Development only!")
        os.makedirs(self.config["paths"]["state_dir"], exist_ok=True)
        self.control.open()
        self.panel.open()
        for backend in (self.camera, self.display):
            if backend is not None:
                backend.open()
        self.audio.open()
        self.updater.open()
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

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self._execute(self.core.handle(io.CheckpointDue()))  # a clean stop loses no up time at all
        self.ledger_store.close()
        self.control.close()
        self.audio.close()
        for backend in (self.camera, self.display):
            if backend is not None:
                backend.close()
        self.mqtt.stop()
        self.panel.close()
        log.info("stopped")

    # --- the loop thread ------------------------------------------------------------------------
    def _dispatch(self, item: Any) -> None:
        if isinstance(item, ControlRequest):
            self._control(item)
        else:
            self._execute(self.core.handle(item))

    def _execute(self, effects: list[Any]) -> None:
        answers = []  # events some effects are answered with at once (CommandStored), not via the queue
        for effect in effects:
            handler = self.effect_handlers.get(type(effect))
            if handler is None:
                raise io.Unhandled(f"the daemon has no handler for effect {type(effect).__name__}")
            try:
                answer = handler(effect)
            except Exception:  # noqa: BLE001 - one failing adapter must not stop the loop
                log.exception("effect %s failed", type(effect).__name__)
                continue
            if isinstance(answer, io.EVENTS):
                answers.append(answer)
        for answer in answers:
            self._execute(self.core.handle(answer))

    def _remember_command(self, effect: io.RememberCommand) -> io.CommandStored:
        try:
            self.replay_store.remember(effect.command_id, effect.expires_at, effect.forget, effect.held_until)
        except Exception as exc:  # noqa: BLE001 - any failure means "not durable": the core refuses the command
            return io.CommandStored(effect.command_id, False, f"{type(exc).__name__}: {exc}")
        return io.CommandStored(effect.command_id, True)

    def _set_microphone(self, effect: io.SetMicrophone) -> None:
        # The on-air LED follows what the core asked for; the uplink confirms (or restarts muted) itself.
        self.panel.set_onair(effect.live)
        if self.camera is not None:
            self.camera.set_microphone(effect.live)

    def _take_screenshot(self, effect: io.TakeScreenshot) -> None:
        if self.display is None:  # configured, but the backend could not start
            self.loop.post(io.ReplyData(effect.command_id, "screenshot", error="the display is not running"))
        else:
            self.display.screenshot(effect.command_id)

    def _probe_camera(self, effect: io.ProbeCamera) -> None:
        if self.camera is None:  # the core knows it is missing, but answer anyway: the run must end
            self.loop.post(io.SelftestCheckDone("camera", selftest_result(False, "selftest.camera.no_backend")))
        else:
            self.camera.run_probe(effect.seconds)

    def _selftest_done(self, effect: io.SelftestDone) -> None:
        waiting, self._selftest_requests = self._selftest_requests, []
        for pending in waiting:
            pending.reply({"ok": True, "result": effect.result, "lines": list(effect.lines), "language": effect.language})

    def _telemetry(self) -> None:
        self._execute(self.core.handle(io.TelemetryDue(sysinfo.telemetry_sample(self.config["paths"]["state_dir"]))))

    def _check_clock(self) -> None:
        synced = sysinfo.clock_synced()
        if synced != self._clock_synced:
            self._clock_synced = synced
            self._execute(self.core.handle(io.HealthReport("clock", "synced" if synced else "unsynced")))

    def _control(self, request: ControlRequest) -> None:
        command = request.body["cmd"]
        if command == "status":
            request.reply({"ok": True, "status": self.core.status()})
        elif command == "version":
            request.reply({"ok": True, "version": __version__, "site": self.core.settings.site_id})
        elif command in ("join", "leave", "selftest"):
            outcome = self.core.local(command, interactive=bool(request.body.get("interactive")))
            if command == "selftest" and outcome.ok:
                self._selftest_requests.append(request)  # answered by the SelftestDone effect
            self._execute(outcome.effects)
            if command != "selftest" or not outcome.ok:
                reply = {"ok": outcome.ok, "message": outcome.message, "state": self.core.state}
                request.reply(reply if outcome.ok else {**reply, "error": outcome.message})
        elif command == "press":
            self._press(request)
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
            self._dispatch(io.ButtonDown())
            self.loop.call_later(seconds, lambda: self.loop.post(io.ButtonUp()))

        def answer() -> None:
            request.reply({"ok": True, "state": self.core.state, "message": f"pressed for {seconds:g} s"})

        # Answer once the release has been handled, so the caller sees the state it caused.
        self.loop.call_later(seconds + 0.05, lambda: self.loop.post(answer))
