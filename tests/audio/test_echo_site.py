"""A whole site in `audio.echo = aec` mode on the echo rig: its uplink captures the canceller's source,
and the centre (nginx-rtmp, measured by `AudioMeter`) hears the meeting's echo removed, next to the
same site with the canceller's plumbing but no cancellation (the null canceller). Restarting the
canceller under the running meeting recovers without a command."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from appliance.media.audio_route import ECHO_SINK, ECHO_SOURCE
from appliance_dev.audio_rig import NULL, TUNED, AudioRig, calibrated, echo_delay
from appliance_dev.central_media import AudioMeter
from appliance_dev.inprocess import InProcessSite
from appliance_dev.waiting import wait_until

pytestmark = pytest.mark.usefixtures("gpio_mock")


@pytest.fixture
def gpio_mock(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


def _named(spec):  # the product's node names (appliance/media/audio_route.py)
    return replace(spec, source_name=ECHO_SOURCE, sink_name=ECHO_SINK)


@contextlib.contextmanager
def _speaking_aec_site(rig: AudioRig, make_config, rtmp_server, monkeypatch,  # noqa: ANN001
                       video: bool = True) -> Iterator[tuple[InProcessSite, AudioMeter]]:
    """A site in `aec` mode on the rig, joined to an open meeting (its microphone live), and the
    centre's meter on its uplink."""
    for name, value in rig.env.items():
        monkeypatch.setenv(name, value)
    config = make_config(camera={"test_audio": "engine"}, display={"backend": "none"}, audio={"echo": "aec"})
    site = InProcessSite(config)
    meter = None
    try:
        wait_until(lambda: site.health.get("audio") == "ok", 10, what=lambda: f"audio ok: {site.health}")
        site.announce("srt://127.0.0.1:9/program", rtmp_server.url(), floor="open")  # open: the site speaks
        site.press()
        site.wait_state("in_meeting", 15)
        meter = AudioMeter(rtmp_server.url("kalibaru"), video=video).start()
        yield site, meter
    finally:
        if meter is not None:
            meter.close()
        site.close()


def _mean_dbfs(meter: AudioMeter, since: float, until: float) -> float:
    windows = meter.windows(since=since, until=until)
    assert len(windows) > 50, f"only {len(windows)} windows of sound reached the server"
    power = sum(10 ** (w.dbfs / 10) for w in windows if w.dbfs != -math.inf) / len(windows)
    return 10 * math.log10(power) if power > 0 else -math.inf


def test_the_centre_hears_the_meeting_echo_cancelled(make_config, rtmp_server, monkeypatch) -> None:
    with AudioRig() as rig:
        delay = echo_delay(rig)
        rig.set_canceller(_named(calibrated(TUNED, delay)))
        with _speaking_aec_site(rig, make_config, rtmp_server, monkeypatch, video=False) as (site, meter):
            publisher = rtmp_server.publisher("kalibaru")

            rig.program(True)  # the meeting's speech on the TV, nobody talking in the room
            time.sleep(2.5)  # convergence
            began = time.monotonic()
            time.sleep(3.0)
            cancelled = _mean_dbfs(meter, began, time.monotonic())
            assert rtmp_server.publisher("kalibaru") == publisher, "the uplink reconnected"

            # The canceller restarts (the audio engine's part crashing) with the null library:
            # the uplink loses its source, comes back to it by itself, and now the echo goes through.
            rig.set_canceller(_named(NULL))
            rig.program(True)
            # Back when one publish has lasted 2 s and the centre's listener hears it steadily again
            # (the uplink may restart more than once while the canceller comes back).
            def settled() -> bool:
                publisher = rtmp_server.publisher("kalibaru")
                time.sleep(2.0)
                return (publisher is not None and rtmp_server.publisher("kalibaru") == publisher
                        and len(meter.windows(since=time.monotonic() - 1.0)) > 80)

            wait_until(settled, 40, what=lambda: f"the uplink back after the canceller restarted: {site.health}")
            began = time.monotonic()
            time.sleep(3.0)
            echo = _mean_dbfs(meter, began, time.monotonic())
    print(f"at the server: echo {echo:.1f} dBFS without cancelling, {cancelled:.1f} dBFS with: "
          f"{echo - cancelled:.1f} dB")
    assert echo > -45, f"the rig's echo did not reach the server ({echo:.1f} dBFS): the test cannot tell"
    assert echo - cancelled >= 20, f"echo {echo:.1f} dBFS, cancelled {cancelled:.1f} dBFS"


def test_without_a_working_engine_the_site_still_joins_and_sends_video(make_config, rtmp_server, monkeypatch,
                                                                        tmp_path) -> None:
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/no-engine/native")  # installed, but not running
    config = make_config(camera={"test_audio": "engine"}, display={"backend": "none"}, audio={"echo": "aec"})
    site = InProcessSite(config)
    try:
        wait_until(lambda: site.health.get("audio") == "error", 10, what=lambda: f"audio error: {site.health}")
        site.announce("srt://127.0.0.1:9/program", rtmp_server.url(), floor="open")
        site.press()
        site.wait_state("in_meeting", 20)
        joined = site.events("meeting.joined")[-1]
        assert joined["degraded"] is False and site.health["uplink"] == "live"
        meter = AudioMeter(rtmp_server.url("kalibaru")).start()
        try:
            began = time.monotonic()
            time.sleep(1.0)
            assert meter.video_pts(since=began), "no video reached the server"
            assert meter.windows(since=began) and meter.loudest(since=began) < -60  # a silent track, not noise
        finally:
            meter.close()
    finally:
        site.close()


def test_the_self_test_reports_the_canceller_and_the_microphone_level(make_config, monkeypatch) -> None:
    from appliance.adapters.audio_checks import engine_selftest

    config = make_config(camera={"test_audio": "engine"}, audio={"echo": "aec"})
    with AudioRig() as rig:
        for name, value in rig.env.items():
            monkeypatch.setenv(name, value)
        missing = engine_selftest(config)  # the engine runs, but no canceller is loaded
        assert missing["ok"] is False and "echo canceller is not loaded" in missing["detail"], missing
        rig.set_canceller(_named(TUNED))
        rig.talker(True)  # someone speaks in the room
        heard = engine_selftest(config)
        rig.talker(False)
        time.sleep(0.5)
        silent = engine_selftest(config)
    assert heard["ok"] is True and "echo cancellation running" in heard["detail"], heard
    assert "microphone level" in heard["detail"], heard
    assert silent["ok"] is False and "silent" in silent["detail"], silent


def test_the_uplink_goes_silent_when_the_canceller_is_gone_and_takes_the_microphone_back_when_it_returns(
        make_config, rtmp_server, monkeypatch) -> None:
    with AudioRig() as rig:
        rig.set_canceller(_named(TUNED))
        with _speaking_aec_site(rig, make_config, rtmp_server, monkeypatch) as (site, meter):
            rig.talker(True)  # someone in the room speaks: the centre hears them
            meter.wait_level(loud=True, after=time.monotonic(), timeout=10)

            rig.set_canceller("off")  # the canceller is gone (its nodes vanish from the engine)
            gone = time.monotonic()
            wait_until(lambda: site.health["audio"] == "error", 10, what=lambda: f"audio error: {site.health}")
            # The uplink falls back to a silent track (never the raw microphone) and keeps sending video.
            # (the watcher's report restarts it at once; an encoder that fails on the engine's input first does too)
            wait_until(lambda: any("input changed" in event["detail"] or "silent track" in event["detail"]
                                   for event in site.events("media.error")), 15,
                       what=lambda: f"the uplink on a silent track: {site.events('media.error')}")
            silent = meter.wait_level(loud=False, after=gone, timeout=15)
            time.sleep(1.0)
            assert meter.loudest(since=silent + 0.2) < -60, "the site was heard while the canceller was gone"
            assert meter.video_pts(since=silent), "no video while the canceller was gone"
            assert site.health["uplink"] == "live", site.health

            rig.set_canceller(_named(TUNED))  # back: no command, the uplink captures the microphone again
            back = time.monotonic()
            wait_until(lambda: site.health["audio"] == "ok", 10, what=lambda: f"audio ok again: {site.health}")
            heard = meter.wait_level(loud=True, after=back, timeout=15)
    assert heard - back < 10
