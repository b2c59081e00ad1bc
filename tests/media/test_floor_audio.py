"""The floor end to end on real parts: a real daemon (testsrc camera, its tone as the microphone)
pushing to nginx-rtmp, signed floor commands through a real Mosquitto, and the sound measured on the
stream the server relays: silent while listening, loud after a grant, silent after a revoke, and
one unbroken stream throughout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.core.protocol import DEFAULT_TOPIC_PREFIX, site_topic
from appliance_dev.broker import Mosquitto
from appliance_dev.central_media import AudioMeter, RtmpServer
from appliance_dev.recorder import MqttRecorder
from appliance_dev.site_process import DaemonProcess, site_config
from tests.support.site import ConsoleKey, meeting_body

SITE = "kalibaru"
LOUD_WITHIN_S = 3.0  # generous for a loaded CI machine; the benchmark measures the real figure


@pytest.fixture
def moderated_site(tmp_path: Path, broker: Mosquitto, observer: MqttRecorder, console_key: ConsoleKey,
                   rtmp_server: RtmpServer):
    overlay = tmp_path / "camera.toml"
    overlay.write_text('[camera]\nbackend = "testsrc"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\n')
    daemon = DaemonProcess(site_config(tmp_path, SITE, broker.url, console_key.public_b64),
                           overlays=[overlay]).start()
    meter = None
    try:
        daemon.wait_connected()
        body = {**meeting_body("m1"), "ingest_url": rtmp_server.url("{site}"), "auto_join": True}
        send(observer, console_key, "meeting.start", body)
        daemon.wait_status(lambda status: status["state"] == "in_meeting", 20)
        meter = AudioMeter(rtmp_server.url(SITE)).start()
        yield daemon, meter
    finally:
        if meter is not None:
            meter.close()
        daemon.stop()


def send(observer: MqttRecorder, key: ConsoleKey, command_type: str, body: dict) -> tuple[dict, float]:
    """A signed command to the site; its ack and when the console had it (time.monotonic())."""
    command = key.command(command_type, body, to=[SITE])
    mark = observer.mark()
    observer.publish(site_topic(DEFAULT_TOPIC_PREFIX, SITE, "cmd"), command)
    ack = observer.ack_for(command["id"], SITE, after=mark)
    return ack, time.monotonic()


def test_silent_while_listening_loud_after_a_grant_silent_after_a_revoke_on_one_unbroken_stream(
        moderated_site, observer: MqttRecorder, console_key: ConsoleKey, rtmp_server: RtmpServer) -> None:
    daemon, meter = moderated_site
    began = time.monotonic()
    publisher = rtmp_server.streams()[SITE]
    time.sleep(1.0)  # a second of the meeting as the studio hears it before anyone has the floor
    assert meter.windows(since=began), "the server relayed no sound at all"
    assert meter.loudest(since=began) < -60, "a moderated site was heard before it was given the floor"
    assert daemon.status()["floor"] == {"mode": "moderated", "status": "listening", "requested_at": None}

    ack, granted = send(observer, console_key, "floor.grant", {"meeting_id": "m1"})
    assert ack["ok"], ack
    loud = meter.wait_level(loud=True, after=granted, timeout=LOUD_WITHIN_S)
    assert daemon.status()["floor"]["status"] == "speaking"
    time.sleep(0.5)

    ack, revoked = send(observer, console_key, "floor.revoke", {"meeting_id": "m1"})
    assert ack["ok"], ack
    silent = meter.wait_level(loud=False, after=revoked, timeout=LOUD_WITHIN_S)
    time.sleep(0.5)
    assert meter.loudest(since=silent + 0.1) < -60, "the sound came back after the revoke"
    assert daemon.status()["floor"]["status"] == "listening"

    # One stream: the same publisher at the server, no reconnect, no jump in its timestamps.
    assert meter.discontinuities(since=began) == []
    assert publisher["publisher"] is not None and rtmp_server.streams()[SITE]["publisher"] == publisher["publisher"]
    assert daemon.status()["health"]["uplink"] == "live"
    errors = [payload for topic, payload, _ in observer.messages
              if topic.endswith("/event") and isinstance(payload, dict) and payload.get("type") == "media.error"]
    assert errors == []
    print(f"grant ack -> audible {1000 * (loud - granted):.0f} ms, revoke ack -> silent {1000 * (silent - revoked):.0f} ms")


def test_a_grant_for_another_meeting_leaves_the_microphone_off(
        moderated_site, observer: MqttRecorder, console_key: ConsoleKey) -> None:
    daemon, meter = moderated_site
    ack, sent = send(observer, console_key, "floor.grant", {"meeting_id": "other-meeting"})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_state"
    time.sleep(1.5)
    assert meter.windows(since=sent) and meter.loudest(since=sent) < -60
    assert daemon.status()["floor"]["status"] == "listening"
