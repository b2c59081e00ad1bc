"""The program and the screens through real libvlc (headless frame callbacks) from a real SRT source."""

from __future__ import annotations

import glob
import os
import time

import pytest

from appliance.core.io import HealthReport
from appliance.media import screens
from appliance.media.display import VlcDisplay, media_options
from appliance_dev.waiting import wait_until
from tests.media.conftest import HEIGHT, KNOWN_RGB, WIDTH

INFO = {"site_name": "Kecamatan Kalibaru", "title": "Musrenbang", "notice": None, "broker_connected": True,
        "uplink": "live", "program": "idle", "camera": "ok"}


def close_to(rgb, expected, tolerance=24):
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected, strict=False))


def test_program_frames_reach_the_display(display, recorder, srt_program):
    display.show_screen("in_meeting", INFO)
    display.start_program(srt_program.url)
    recorder.wait_status("program", "playing", 10)
    counted = display.sink.frames
    wait_until(lambda: display.sink.frames - counted >= 10, 1.5, what="ten new pictures, not redraws of one")
    picture = display.sink.picture()
    assert picture.size == (WIDTH, HEIGHT)
    assert close_to(picture.getpixel((WIDTH * 3 // 4, HEIGHT * 3 // 4)), KNOWN_RGB), picture.getpixel((240, 135))
    assert recorder.statuses("program")[:2] == ["buffering", "playing"]
    # The site's camera is on air: the red mark is drawn top right over the program.
    corner = picture.crop((WIDTH // 2, 0, WIDTH, HEIGHT // 5))
    assert any(r > 180 and g < 110 and b < 110 for _, (r, g, b) in corner.getcolors(maxcolors=1 << 20))
    assert os.path.exists(os.path.join(display.sink.frames_dir, "display.jpg"))


def test_program_lost_shows_reconnecting_and_recovers_without_a_command(display, recorder, srt_program):
    display.show_screen("in_meeting", INFO)
    display.start_program(srt_program.url)
    recorder.wait_status("program", "playing", 10)
    lost = time.monotonic()
    srt_program.stop()
    retry = recorder.wait_status("program", "retrying", 6, after=lost)
    assert "no new frame" in retry.detail or "player" in retry.detail
    wait_until(lambda: display.shown_screen == "program_reconnecting", 2)
    wait_until(lambda: close_to(display.sink.picture().getpixel((5, HEIGHT // 2)),
                                       screens.BACKGROUNDS["program_reconnecting"]), 3)
    # Retries probe the source on a hidden player: the message stays on the glass meanwhile.
    for _ in range(10):
        time.sleep(0.25)  # deliberate: the screen must stay for a while, which only time shows
        assert close_to(display.sink.picture().getpixel((5, HEIGHT // 2)), screens.BACKGROUNDS["program_reconnecting"])
    assert display.probing or display.status == "retrying"
    back = time.monotonic()
    srt_program.start()
    recorder.wait_status("program", "playing", 30, after=back)
    wait_until(lambda: close_to(display.sink.picture().getpixel((WIDTH * 3 // 4, HEIGHT * 3 // 4)), KNOWN_RGB), 3)


def test_stop_returns_to_the_screen(display, recorder, srt_program):
    display.start_program(srt_program.url)
    recorder.wait_status("program", "playing", 10)
    display.show_screen("leaving", INFO)
    stopped = time.monotonic()
    display.stop_program()
    recorder.wait_status("program", "idle", 2, after=stopped)
    wait_until(lambda: display.shown_screen == "leaving", 2)
    wait_until(lambda: close_to(display.sink.picture().getpixel((5, HEIGHT // 2)), screens.BACKGROUNDS["leaving"]), 3)


def test_screens_reach_the_glass(display):
    for name in ("meeting_available", "broker_unreachable", "idle"):
        display.show_screen(name, INFO)
        wait_until(lambda name=name: display.shown_screen == name and close_to(
            display.sink.picture().getpixel((5, HEIGHT // 2)), screens.BACKGROUNDS[name]), 5, what=name)


def test_unreachable_program_is_retried_then_reported(display, recorder):
    display.start_program("srt://127.0.0.1:9")  # nothing listens there
    retry = recorder.wait_status("program", "retrying", 10)
    assert "no picture" in retry.detail
    wait_until(lambda: display.shown_screen == "program_reconnecting", 2)


def test_srt_query_becomes_vlc_options():
    url, options = media_options("srt://media.example:8890?streamid=read:program&passphrase=s3cret-pass")
    assert url == "srt://media.example:8890"
    assert options == [":srt-streamid=read:program", ":srt-passphrase=s3cret-pass"]
    assert media_options("rtsp://media.example/program") == ("rtsp://media.example/program", [])


@pytest.mark.skipif(bool(glob.glob("/usr/lib/*/vlc/plugins/video_output/*drm_vout*")),
                    reason="this VLC has drm_vout (Raspberry Pi OS): the failure cannot be provoked")
def test_an_output_libvlc_cannot_provide_is_reported_and_programs_fail_fast(make_config, recorder):
    display = VlcDisplay(make_config(display={"output": "drm"}), recorder)
    display.open()
    try:
        health = recorder.wait_for(lambda e: isinstance(e, HealthReport) and e.component == "display", 10)
        assert health.value == "error" and "drm" in health.detail
        display.start_program("srt://127.0.0.1:9")
        assert "drm" in recorder.wait_status("program", "failed", 2).detail
        display.stop_program()
        recorder.wait_status("program", "idle", 2)
    finally:
        display.close()
