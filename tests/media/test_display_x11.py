"""`display.output = "x11"`: the same screens and program in a real X window (Xvfb), grabbed back by ffmpeg.

Needs the optional Debian packages xvfb and vlc-plugin-video-output (see docs/media.md).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
from PIL import Image

from appliance.core.io import HealthReport
from appliance.media import proc, screens
from appliance.media.display import VlcDisplay
from appliance_dev.central_media import SrtProgram
from appliance_dev.waiting import wait_until
from tests.media.conftest import KNOWN_RGB

HAS_X11_OUTPUT = bool(glob.glob("/usr/lib/*/vlc/plugins/video_output/libxcb_x11_plugin.so"))
pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None or not HAS_X11_OUTPUT,
                                reason="optional packages xvfb and vlc-plugin-video-output are not installed")
SIZE = (640, 360)


@pytest.fixture
def x_display(monkeypatch):
    read, write = os.pipe()
    server = proc.spawn(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{SIZE[0]}x{SIZE[1]}x24", "-nolisten", "tcp"],
                        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as answer:
        name = f":{answer.readline().strip()}"
    monkeypatch.setenv("DISPLAY", name)
    yield name
    proc.kill(server)


@pytest.fixture
def srt_program():
    # The window takes the video's size when no window manager honours fullscreen (Xvfb has none),
    # so the program here has the screen's size; on a desktop the window manager makes it fullscreen.
    video = (f"color=c=0x2080c0:size={SIZE[0]}x{SIZE[1]}:rate=15[bg];testsrc2=size=64x48:rate=15[fg];"
             "[bg][fg]overlay=0:0")
    program = SrtProgram(video=video, bitrate_kbps=300).start()
    yield program
    program.stop()


def grab(display: str, path: str) -> Image.Image:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "x11grab",
                    "-video_size", f"{SIZE[0]}x{SIZE[1]}", "-i", display, "-frames:v", "1", path], check=True)
    return Image.open(path).convert("RGB")


def near(rgb, expected, tolerance=30):
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected, strict=False))


def test_screens_and_program_in_an_x_window(x_display, make_config, recorder, srt_program, tmp_path):
    display = VlcDisplay(make_config(display={"output": "x11", "width": SIZE[0], "height": SIZE[1]}), recorder)
    display.open()
    try:
        health = recorder.wait_for(lambda e: isinstance(e, HealthReport) and e.component == "display", 10)
        assert health.value == "ok" and "x11" in health.detail
        display.show_screen("meeting_available", {"site_name": "Kalibaru", "title": "Musrenbang", "uplink": "idle"})
        wait_until(lambda: near(grab(x_display, str(tmp_path / "s.png")).getpixel((4, SIZE[1] // 2)),
                                screens.BACKGROUNDS["meeting_available"]), 8, interval=0.3,
                   what="the meeting_available screen in the window")
        display.start_program(srt_program.url)
        display.show_screen("in_meeting", {"site_name": "Kalibaru", "uplink": "live"})
        recorder.wait_status("program", "playing", 10)
        corner = (SIZE[0] * 3 // 4, SIZE[1] * 3 // 4)

        def program_in_window() -> Image.Image | None:
            shot = grab(x_display, str(tmp_path / "p.png"))
            return shot if near(shot.getpixel(corner), KNOWN_RGB) else None

        picture = wait_until(program_in_window, 8, interval=0.3, what="the program in the window")
        badge = picture.crop((SIZE[0] // 2, 0, SIZE[0], SIZE[1] // 5))
        assert any(r > 150 and g < 60 and b < 60 for _, (r, g, b) in badge.getcolors(maxcolors=1 << 20))
    finally:
        display.close()
