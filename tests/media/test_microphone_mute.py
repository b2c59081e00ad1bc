"""The microphone's runtime gain, heard at a real nginx-rtmp: mute and unmute without restarting the encoder.

Every level is measured at the server by `AudioMeter` (a viewer decoding what nginx delivers); the
stream is "unbroken" when the encoder's pid and nginx's publisher id stay the same and the audio
and video timestamps the server delivered never leap over 200 ms nor go back (beyond the few ms a
wall-clock-stamped ALSA capture wobbles; a new publisher starts again from 0).
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from appliance.media.microphone import microphone_filters
from appliance.media.picamera import PicameraUplink
from appliance.media.testsrc import TestsrcUplink
from appliance_dev.central_media import LOUD_DBFS, SILENT_DBFS, AudioMeter
from appliance_dev.waiting import wait_until
from tests.media import fake_picamera2
from tests.media.conftest import FPS, HEIGHT, WIDTH

SITE = "kalibaru"
HEARD_S = 3.0  # a gain change must be heard at the server within this (measured: 0.05-0.1 s)


@pytest.fixture
def meters():
    made: list[AudioMeter] = []
    yield lambda url: made.append(AudioMeter(url).start()) or made[-1]
    for meter in made:
        meter.close()


@pytest.fixture
def uplinks():
    made = []
    yield lambda uplink: made.append(uplink) or uplink
    for uplink in made:
        uplink.close()


def _live(uplink, recorder, rtmp_server, microphone_live: bool) -> None:
    uplink.open()
    uplink.start(rtmp_server.url(SITE), microphone_live=microphone_live)
    recorder.wait_status("uplink", "live", 10)
    wait_until(lambda: uplink.microphone_confirmed is not None, 5, what="the encoder to be live")
    wait_until(lambda: rtmp_server.publisher(SITE), 5, what="nginx to show the publisher")


def _stays(meter: AudioMeter, loud: bool, since: float, seconds: float, *, unbroken: bool = True) -> None:
    """Every window that arrives during `seconds` after `since` is loud (or silent)."""
    meter.wait_for(lambda w: w.arrived > since + seconds, since, seconds + 5, what=f"{seconds:g} s of windows")
    windows = meter.windows(since, since + seconds)
    assert len(windows) > (seconds * 50 if unbroken else 10), f"only {len(windows)} windows in {seconds:g} s"
    if loud:
        quietest = min(w.dbfs for w in windows)
        assert quietest > LOUD_DBFS, f"a window at {quietest:.1f} dBFS while the microphone was live"
    else:
        loudest = max(w.dbfs for w in windows)
        assert loudest < SILENT_DBFS, f"a window at {loudest:.1f} dBFS while the microphone was muted"


def _toggles_without_a_break(uplink, meter, rtmp_server) -> None:
    """Muted at first: silent; unmute: loud; mute: silent; the same encoder and publisher throughout."""
    pid, publisher = uplink.encoder_pid, rtmp_server.publisher(SITE)
    began = meter.ready_at
    _stays(meter, False, began, 0.5)
    assert uplink.microphone_confirmed is False

    asked = time.monotonic()
    uplink.set_microphone(True)
    assert time.monotonic() - asked < 0.05  # the loop thread never waits on ffmpeg
    heard = meter.wait_level(loud=True, after=asked, timeout=HEARD_S)
    wait_until(lambda: uplink.microphone_confirmed is True, 2, what="the encoder to confirm live")
    _stays(meter, True, heard + 0.1, 0.5)

    asked = time.monotonic()
    uplink.set_microphone(False)
    uplink.set_microphone(False)  # the same again: nothing more to do
    silent = meter.wait_level(loud=False, after=asked, timeout=HEARD_S)
    wait_until(lambda: uplink.microphone_confirmed is False, 2, what="the encoder to confirm muted")
    _stays(meter, False, silent + 0.1, 0.5)

    assert uplink.encoder_pid == pid, "the encoder was restarted"
    assert rtmp_server.publisher(SITE) == publisher, "the publisher reconnected"
    assert meter.discontinuities(since=began) == []


def test_mute_and_unmute_are_heard_at_the_server_without_restarting_the_encoder(
        make_config, recorder, rtmp_server, meters, uplinks):
    uplink = uplinks(TestsrcUplink(make_config(), recorder))
    _live(uplink, recorder, rtmp_server, microphone_live=False)
    meter = meters(rtmp_server.url(SITE))
    _toggles_without_a_break(uplink, meter, rtmp_server)
    assert recorder.statuses("uplink") == ["starting", "live"]


def test_started_live_is_loud_from_the_start(make_config, recorder, rtmp_server, meters, uplinks):
    uplink = uplinks(TestsrcUplink(make_config(), recorder))
    _live(uplink, recorder, rtmp_server, microphone_live=True)
    assert uplink.microphone_confirmed is True
    meter = meters(rtmp_server.url(SITE))
    _stays(meter, True, meter.ready_at, 0.5)


def test_encoder_that_cannot_be_told_to_mute_is_restarted_muted(make_config, recorder, rtmp_server, meters, uplinks):
    """Fail closed: the control socket vanishes (a tmp cleaner, a crashed filter) while the site speaks."""
    uplink = uplinks(TestsrcUplink(make_config(), recorder))
    _live(uplink, recorder, rtmp_server, microphone_live=True)
    meter = meters(rtmp_server.url(SITE))
    meter.wait_level(loud=True, after=0.0, timeout=HEARD_S)
    pid, publisher = uplink.encoder_pid, rtmp_server.publisher(SITE)
    control = uplink._session.control_dir
    assert os.stat(control).st_mode & 0o777 == 0o700  # only the daemon's user can change the gain
    sockets = os.listdir(control)
    assert len(sockets) == 1
    os.unlink(os.path.join(control, sockets[0]))

    asked = time.monotonic()
    uplink.set_microphone(False)
    silent = meter.wait_level(loud=False, after=asked, timeout=6)
    assert uplink.encoder_pid not in (None, pid)  # a new encoder: the old one could not be told
    wait_until(lambda: rtmp_server.publisher(SITE) not in (None, publisher), 5, what="the new publisher")
    wait_until(lambda: uplink.microphone_confirmed is False, 5, what="the new encoder to be live, muted")
    _stays(meter, False, silent, 1.0)
    retry = recorder.wait_status("uplink", "retrying", 1, after=asked)
    assert "microphone muted" in retry.detail and "socket is gone" in retry.detail
    recorder.wait_status("uplink", "live", 5, after=asked)


def test_hung_encoder_is_restarted_muted_without_waiting_for_the_stall(make_config, recorder, rtmp_server, meters, uplinks):
    """Fail closed: ffmpeg stops answering (SIGSTOP); the mute gives up after 1 s, not the 3 s stall check."""
    uplink = uplinks(TestsrcUplink(make_config(), recorder))
    _live(uplink, recorder, rtmp_server, microphone_live=True)
    meter = meters(rtmp_server.url(SITE))
    meter.wait_level(loud=True, after=0.0, timeout=HEARD_S)
    pid = uplink.encoder_pid
    os.kill(pid, signal.SIGSTOP)
    asked = time.monotonic()
    uplink.set_microphone(False)
    retry = recorder.wait_status("uplink", "retrying", 5, after=asked)
    assert "microphone muted" in retry.detail and "no answer within 1 s" in retry.detail
    silent = meter.wait_level(loud=False, after=asked, timeout=6)
    assert uplink.encoder_pid not in (None, pid)
    _stays(meter, False, silent, 1.0)


def test_crashed_encoder_comes_back_muted(make_config, recorder, rtmp_server, meters, uplinks):
    """Started live, muted later, then ffmpeg dies: the retry starts with the gain wanted now, not at start."""
    uplink = uplinks(TestsrcUplink(make_config(), recorder))
    _live(uplink, recorder, rtmp_server, microphone_live=True)
    meter = meters(rtmp_server.url(SITE))
    meter.wait_level(loud=True, after=0.0, timeout=HEARD_S)
    asked = time.monotonic()
    uplink.set_microphone(False)
    silent = meter.wait_level(loud=False, after=asked, timeout=HEARD_S)
    pid, publisher = uplink.encoder_pid, rtmp_server.publisher(SITE)

    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    recorder.wait_status("uplink", "retrying", 3, after=killed)
    recorder.wait_status("uplink", "live", 10, after=killed)
    wait_until(lambda: rtmp_server.publisher(SITE) not in (None, publisher), 5, what="the new publisher")
    restarted = time.monotonic()
    assert uplink.encoder_pid not in (None, pid)
    assert uplink.microphone_confirmed is False
    # Silent from the mute (past the codec's fade), through the crash, until a second of the new encoder was heard.
    meter.wait_for(lambda w: True, restarted, 5, what="sound from the new encoder")
    _stays(meter, False, silent + 0.1, restarted + 0.9 - silent, unbroken=False)
    # The meter's check sees such a restart (so an empty list elsewhere means something).
    assert any("audio pts" in problem for problem in meter.discontinuities(since=silent))


def test_picamera_command_line_carries_the_runtime_gain(make_config, recorder, monkeypatch):
    fake_picamera2.install(monkeypatch)
    for device in ("plughw:1,0", ""):
        uplink = PicameraUplink(make_config(camera={"backend": "picamera2", "audio_device": device}), recorder)
        muted = uplink.command("rtmp://127.0.0.1:1935/live/kalibaru", False, "/run/mic:x/mic1.sock")
        at = muted.index("-af")
        assert muted[at - 2:at] == ["-map", "1:a"]  # the microphone (or the silent track) goes through it
        # Both colons escaped for the option parser, then the backslashes for the graph parser; starts muted.
        assert muted[at + 1] == r"azmq=bind_address=ipc\\:///run/mic\\:x/mic1.sock,volume@mic=volume=0"
        live = uplink.command("rtmp://127.0.0.1:1935/live/kalibaru", True, None)
        assert live[live.index("-af") + 1] == "volume@mic=volume=1" == microphone_filters(True)
        uplink.close()


def test_picamera_microphone_mutes_without_restarting_the_pusher(
        make_config, recorder, rtmp_server, meters, uplinks, tmp_path, monkeypatch):
    """The Pi path with the stand-in camera (real H.264) and a real ALSA capture (a tone, via ALSA's file plugin)."""
    fake_picamera2.install(monkeypatch)
    sample = str(tmp_path / "camera.h264")
    fake_picamera2.encode_sample(sample, WIDTH, HEIGHT, FPS)
    monkeypatch.setattr(fake_picamera2.Picamera2, "sample", sample)
    monkeypatch.setattr(fake_picamera2.Picamera2, "fps", FPS)
    tone = tmp_path / "tone.raw"  # 60 s of 440 Hz, -21 dBFS RMS, 48 kHz mono s16le
    samples = [round(4096 * math.sin(2 * math.pi * 440 * i / 48000)) for i in range(4800)]
    tone.write_bytes(b"".join(s.to_bytes(2, "little", signed=True) for s in samples) * 600)
    conf = tmp_path / "asound.conf"
    conf.write_text('</usr/share/alsa/alsa.conf>\n'
                    f'pcm.roommic {{ type file slave.pcm "null" file "/dev/null" infile "{tone}" format "raw" }}\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    uplink = uplinks(PicameraUplink(make_config(camera={"backend": "picamera2", "audio_device": "roommic"}), recorder))
    _live(uplink, recorder, rtmp_server, microphone_live=False)
    meter = meters(rtmp_server.url(SITE))
    _toggles_without_a_break(uplink, meter, rtmp_server)
