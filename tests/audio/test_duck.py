"""`audio.echo = duck` on the rig: the program, played by the site's real libvlc into the rig's TV
speaker, is at least 20 dB quieter while the site speaks, and back to full volume when it listens."""

from __future__ import annotations

import json
import time

import pytest

from appliance.adapters.audio_checks import level_dbfs, record
from appliance.core.io import MessageReceived
from appliance.core.protocol import build_command
from appliance_dev.audio_rig import AudioRig
from appliance_dev.inprocess import InProcessSite
from appliance_dev.waiting import wait_until

pytestmark = pytest.mark.usefixtures("gpio_mock")


@pytest.fixture
def gpio_mock(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


def speaker_dbfs(rig: AudioRig, seconds: float = 1.0) -> float:
    """What the TV speaker plays now: its monitor's RMS level over `seconds` (the rig's env is set)."""
    data = record("rig_speaker.monitor", seconds, rate=48000)
    assert len(data) > 9600, "nothing recorded from the speaker"
    return level_dbfs(data)


def floor_command(site: InProcessSite, command_type: str) -> None:
    command = build_command(command_type, {"meeting_id": "musrenbang"}, to=[site.site_id], issued_at=time.time(),
                            ttl_s=60)
    site.daemon.post(MessageReceived(site.daemon.core.topics.cmd, json.dumps(command).encode()))


def test_duck_lowers_the_program_only_while_the_site_speaks(make_config, rtmp_server, srt_program, monkeypatch):
    with AudioRig() as rig:
        for name, value in {**rig.env, "PULSE_SINK": "rig_speaker"}.items():
            monkeypatch.setenv(name, value)
        config = make_config(display={"audio_device": "pulse"}, audio={"echo": "duck"})
        site = InProcessSite(config)
        try:
            site.announce(srt_program.url, rtmp_server.url())
            site.press()
            site.wait_state("in_meeting", 20)
            wait_until(lambda: speaker_dbfs(rig, 0.3) > -40, 10, what="the program on the TV speaker")
            listening = speaker_dbfs(rig)
            floor_command(site, "floor.grant")
            wait_until(lambda: site.daemon.status()["floor"]["status"] == "speaking", 5, what="the floor granted")
            time.sleep(0.5)
            speaking = speaker_dbfs(rig)
            floor_command(site, "floor.revoke")
            wait_until(lambda: site.daemon.status()["floor"]["status"] == "listening", 5, what="the floor revoked")
            time.sleep(0.5)
            again = speaker_dbfs(rig)
        finally:
            site.close()
    print(f"program at the speaker: listening {listening:.1f} dBFS, speaking {speaking:.1f}, listening {again:.1f}")
    assert listening - speaking >= 20, (listening, speaking)
    assert listening - speaking <= 40, (listening, speaking)  # quieter, not muted: the meeting is still heard
    assert abs(again - listening) < 3, (listening, again)
