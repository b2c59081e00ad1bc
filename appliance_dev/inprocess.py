"""A whole site in this process, through the Daemon's public face and without a broker.

For the media tests and benchmarks: the real core, loop and media backends, fed commands the way
the MQTT link would post them, its publishes kept in memory (`DetachedLink`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from appliance.core.io import ButtonDown, ButtonUp, MessageReceived
from appliance.core.protocol import build_command
from appliance_dev.waiting import wait_until


class InProcessSite:
    def __init__(self, config: Any, **settings: Any) -> None:
        """`settings` override the core's settings, e.g. join_timeout_s=4.0."""
        os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")  # before gpiozero picks its factory
        from appliance.daemon import Daemon, settings_from  # noqa: PLC0415

        core_settings = dataclasses.replace(settings_from(config), **settings)
        self.site_id = core_settings.site_id
        self.daemon = Daemon.without_broker(config, settings=core_settings).start()

    def announce(self, program_url: str, ingest_url: str, meeting_id: str = "musrenbang", timeout: float = 5.0,
                 floor: str = "moderated") -> None:
        """A meeting.start as the console would send it (unsigned: the test configs allow that)."""
        body = {"meeting_id": meeting_id, "title": meeting_id.title(), "program_url": program_url,
                "ingest_url": ingest_url, "auto_join": False, "floor": floor}
        command = build_command("meeting.start", body, to=[self.site_id], issued_at=time.time(), ttl_s=3600)
        self.daemon.post(MessageReceived(self.daemon.core.topics.cmd, json.dumps(command).encode()))
        self.wait_state("meeting_available", timeout)

    def press(self) -> float:
        """A press as short as the panel allows; returns when it was made (the core acts on the release)."""
        pressed = time.monotonic()
        self.daemon.post(ButtonDown())
        self.daemon.post(ButtonUp())
        return pressed

    def leave(self) -> None:
        reply = self.daemon.request({"cmd": "leave"})
        if not reply["ok"]:
            raise RuntimeError(f"leave refused: {reply}")

    def wait_state(self, state: str, timeout: float) -> None:
        def seen() -> str:
            status = self.daemon.status()
            return f"state {state} (last: {status['state']}, health {status['health']})"

        wait_until(lambda: self.daemon.status()["state"] == state, timeout, what=seen, interval=0.01)

    @property
    def health(self) -> dict[str, str]:
        return self.daemon.status()["health"]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [payload for topic, payload, _ in list(self.daemon.mqtt.published)
                if topic.endswith("/event") and payload["type"] == kind]

    def close(self) -> None:
        self.daemon.stop()
