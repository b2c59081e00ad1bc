"""Build a core on a fake clock and drive it the way the daemon would."""

from __future__ import annotations

import json
from typing import Any

from appliance.core import io
from appliance.core.clock import FakeClock
from appliance.core.machine import ApplianceCore, CoreSettings
from appliance.core.protocol import CommandPolicy
from appliance.core.uptime import UptimeLedger
from tests.support.site import ConsoleKey, meeting_body

SITE = "kalibaru"
KEY = ConsoleKey()


def make_core(*, camera: bool = False, display: bool = False, clock: FakeClock | None = None,
              replay: dict[str, float] | None = None, allow_unsigned: bool = False, uptime: UptimeLedger | None = None,
              **settings: Any) -> tuple[ApplianceCore, FakeClock]:
    """`settings` override CoreSettings fields (e.g. language="en", uptime_publish_s=900)."""
    clock = clock or FakeClock()
    settings.setdefault("version", "test")
    settings.setdefault("policy", CommandPolicy(SITE, KEY.private.public_key(), allow_unsigned, ("127.0.0.1",), 86400))
    core_settings = CoreSettings(
        site_id=SITE, site_kind="kecamatan", site_name="Kecamatan Kalibaru",
        camera_enabled=camera, display_enabled=display, boot_id="boot", **settings,
    )
    core = ApplianceCore(core_settings, clock, replay, uptime)
    core.start()
    core.handle(io.BrokerConnected())
    for component, enabled in (("camera", camera), ("display", display)):
        if enabled:
            core.handle(io.HealthReport(component, "ok"))  # as the backends' open() reports
    return core, clock


def command(core: ApplianceCore, command_type: str, body: dict[str, Any] | None = None, **kwargs: Any) -> tuple[dict, list]:
    """Send a signed command at the core's own time; return its ack and all effects."""
    signed = KEY.command(command_type, body, issued_at=core.clock.wall(), **kwargs)
    effects = receive(core, json.dumps(signed).encode())
    return ack_of(effects), effects


def receive(core: ApplianceCore, payload: bytes, stored: bool = True) -> list:
    """A message on the command topic, with the replay id saved (or, stored=False, failing to be
    saved) as the daemon answers RememberCommand: at once, before anything else."""
    return answer_storage(core, core.handle(io.MessageReceived(core.topics.cmd, payload)), stored)


def answer_storage(core: ApplianceCore, effects: list, stored: bool = True) -> list:
    for effect in list(effects):
        if isinstance(effect, io.RememberCommand):
            detail = "" if stored else "OSError: [Errno 28] No space left on device"
            effects += answer_storage(core, core.handle(io.CommandStored(effect.command_id, stored, detail)), stored)
    return effects


def announce(core: ApplianceCore, meeting_id: str = "m1", auto_join: bool = False) -> dict:
    return command(core, "meeting.start", meeting_body(meeting_id, auto_join=auto_join))[0]


def ack_of(effects: list) -> dict:
    acks = [e.payload for e in effects if isinstance(e, io.Publish) and e.topic.endswith("/ack")]
    assert len(acks) == 1, effects
    return acks[0]


def published(effects: list, suffix: str) -> list[dict]:
    return [e.payload for e in effects if isinstance(e, io.Publish) and e.topic.endswith(suffix)]


def events(effects: list) -> list[str]:
    return [payload["type"] for payload in published(effects, "/event")]


def press(core: ApplianceCore, clock: FakeClock, seconds: float = 0.2) -> list:
    """A finger on the button: down, time passes (deadlines fire as the loop would fire them), up."""
    effects = core.handle(io.ButtonDown())
    end = clock.monotonic() + seconds
    while (deadline := core.next_deadline()) is not None and deadline <= end:
        clock.advance(max(0.0, deadline - clock.monotonic()))
        effects += core.tick()
    clock.advance(max(0.0, end - clock.monotonic()))
    effects += core.handle(io.ButtonUp())
    return effects
