"""The daemon's core and dispatch driving the real media backends through a whole meeting."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid

import pytest

from appliance.core.clock import rfc3339
from appliance.core.io import ButtonDown, ButtonUp, MessageReceived
from appliance.daemon import Daemon

pytestmark = pytest.mark.usefixtures("gpio_mock")


@pytest.fixture
def gpio_mock(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


class Site:
    """A Daemon with its loop on a thread; only MQTT is left unconnected (publishes are recorded)."""

    def __init__(self, config, join_timeout_s: float = 20.0) -> None:
        self.daemon = daemon = Daemon(config)
        daemon.core.settings = dataclasses.replace(daemon.core.settings, join_timeout_s=join_timeout_s)
        self.published: list[tuple[str, dict]] = []
        daemon.mqtt.publish = lambda topic, payload, retain=False: self.published.append((topic, payload))
        for backend in (daemon.camera, daemon.display):
            if backend is not None:
                backend.open()
        daemon._execute(daemon.core.start())
        daemon.loop.watch_deadline(daemon.core.next_deadline, lambda: daemon._execute(daemon.core.tick()))
        self.thread = threading.Thread(target=daemon.loop.run, daemon=True)
        self.thread.start()

    def announce(self, program_url: str, ingest_url: str) -> None:
        now = time.time()
        command = {"v": 1, "id": f"cmd-{uuid.uuid4().hex[:8]}", "type": "meeting.start",
                   "issued_at": rfc3339(now), "expires_at": rfc3339(now + 600), "to": ["kalibaru"],
                   "body": {"meeting_id": "musrenbang", "title": "Musrenbang", "program_url": program_url,
                            "ingest_url": ingest_url, "auto_join": False}}
        self.daemon.loop.post(MessageReceived(self.daemon.core.topics.cmd, json.dumps(command).encode()))
        self.wait_state("meeting_available", 3)

    def press(self) -> None:
        self.daemon.loop.post(ButtonDown())
        self.daemon.loop.post(ButtonUp())

    def leave(self) -> None:
        self.daemon.loop.post(lambda: self.daemon._execute(self.daemon.core.local("leave").effects))

    def wait_state(self, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.daemon.core.state != state:
            assert time.monotonic() < deadline, f"state {self.daemon.core.state}, wanted {state}; health {self.health}"
            time.sleep(0.02)

    @property
    def health(self) -> dict:
        return dict(self.daemon.core.health)

    def events(self, kind: str) -> list[dict]:
        return [payload for topic, payload in self.published if topic.endswith("/event") and payload["type"] == kind]

    def close(self) -> None:
        self.daemon.loop.stop()
        self.thread.join(5)
        for backend in (self.daemon.camera, self.daemon.display):
            if backend is not None:
                backend.close()


@pytest.fixture
def sites():
    made: list[Site] = []
    yield lambda *args, **kwargs: made.append(Site(*args, **kwargs)) or made[-1]
    for site in made:
        site.close()


def test_press_joins_with_live_uplink_and_playing_program_then_leave_stops_both(make_config, sites, rtmp_server, srt_program):
    site = sites(make_config())
    site.announce(srt_program.url, rtmp_server.url())
    site.press()
    site.wait_state("joining", 2)
    site.wait_state("in_meeting", 15)
    assert site.health["uplink"] == "live" and site.health["program"] == "playing", [e["detail"] for e in site.events("media.error")]
    assert site.events("meeting.joined")[-1]["degraded"] is False
    assert rtmp_server.publishing("kalibaru")
    left = time.monotonic()
    site.leave()
    site.wait_state("meeting_available", 2.5)
    assert site.health["uplink"] == "idle" and site.health["program"] == "idle"
    while rtmp_server.publishing("kalibaru") and time.monotonic() - left < 2.0:
        time.sleep(0.05)
    assert not rtmp_server.publishing("kalibaru")
    assert site.events("meeting.left")[-1]["reason"] == "leave"
    deadline = time.monotonic() + 2
    while site.daemon.display.shown_screen != "meeting_available" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.daemon.display.shown_screen == "meeting_available"


def test_site_without_camera_joins_as_a_viewer(make_config, sites, srt_program):
    site = sites(make_config(camera={"backend": "none"}))
    assert site.daemon.camera is None
    site.announce(srt_program.url, "rtmp://127.0.0.1:1/live/{site}")
    site.press()
    site.wait_state("in_meeting", 15)
    joined = site.events("meeting.joined")[-1]
    assert joined["degraded"] is False and joined["program"] == "playing"
    assert site.health["camera"] == "disabled" and site.health["uplink"] == "idle"


def test_a_site_whose_camera_cannot_send_still_watches(make_config, sites, srt_program):
    site = sites(make_config(), join_timeout_s=4.0)
    site.announce(srt_program.url, "rtmp://127.0.0.1:9/live/{site}")  # nothing takes the uplink
    site.press()
    site.wait_state("in_meeting", 10)
    joined = site.events("meeting.joined")[-1]
    assert joined["degraded"] is True and joined["program"] == "playing"
    assert joined["uplink"] in ("starting", "retrying")
    assert any(event["kind"] == "uplink" for event in site.events("media.error"))
    assert site.daemon.display.status == "playing"
