"""A whole site (the public Daemon, broker-less) driving the real media backends through a meeting."""

from __future__ import annotations

import time

import pytest

from appliance_dev.inprocess import InProcessSite
from appliance_dev.waiting import wait_until

pytestmark = pytest.mark.usefixtures("gpio_mock")


@pytest.fixture
def gpio_mock(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture
def sites():
    made: list[InProcessSite] = []
    yield lambda *args, **kwargs: made.append(InProcessSite(*args, **kwargs)) or made[-1]
    for site in made:
        site.close()


def test_press_joins_with_live_uplink_and_playing_program_then_leave_stops_both(make_config, sites, rtmp_server, srt_program):
    site = sites(make_config())
    site.announce(srt_program.url, rtmp_server.url())
    site.press()
    site.wait_state("in_meeting", 15)
    errors = [event["detail"] for event in site.events("media.error")]
    assert site.health["uplink"] == "live" and site.health["program"] == "playing", errors
    assert site.events("meeting.joined")[-1]["degraded"] is False
    assert rtmp_server.publishing("kalibaru")
    left = time.monotonic()
    site.leave()
    site.wait_state("meeting_available", 2.5)
    assert site.health["uplink"] == "idle" and site.health["program"] == "idle"
    assert wait_until(lambda: not rtmp_server.publishing("kalibaru"), 2.0 - (time.monotonic() - left))
    assert site.events("meeting.left")[-1]["reason"] == "leave"
    assert wait_until(lambda: site.daemon.display.shown_screen == "meeting_available", 2)


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
