"""Real media fixtures: nginx-rtmp, SRT program sources, ffprobe; all on 127.0.0.1 and free ports."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from appliance.config import load
from appliance.core.io import HealthReport
from appliance_dev.central_media import RtmpServer, SrtProgram, probe

# Small pictures keep 2 cores free enough for encoder, server and decoder at once.
WIDTH, HEIGHT, FPS = 320, 180, 15
KNOWN_RGB = (32, 128, 192)  # the program's background colour, checked on the decoded picture
PROGRAM_VIDEO = (f"color=c=0x2080c0:size={WIDTH}x{HEIGHT}:rate={FPS}[bg];"
                 f"testsrc2=size=64x48:rate={FPS}[fg];[bg][fg]overlay=0:0")

for tool in ("ffmpeg", "ffprobe", "nginx"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is required by tests/media (make setup installs it)")


class Recorder:
    """Stands in for the daemon's `post`: keeps every event with its arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self._cond:
            self.events.append((time.monotonic(), event))
            self._cond.notify_all()

    def statuses(self, kind: str) -> list[str]:
        return [event.status for _, event in self.events if getattr(event, "kind", None) == kind]

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, after: float = 0.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, event in self.events:
                    if at >= after and predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [event for at, event in self.events if at >= after]
                    raise AssertionError(f"no matching event within {timeout:g} s; saw {seen}")
                self._cond.wait(remaining)

    def wait_status(self, kind: str, status: str, timeout: float, after: float = 0.0) -> Any:
        return self.wait_for(lambda e: getattr(e, "kind", None) == kind and e.status == status, timeout, after)


def assert_h264_and_aac(url: str) -> None:
    """What a camera uplink must deliver: H.264 at the configured size, with an AAC track."""
    seen = probe(url)
    assert seen["video"].get("codec_name") == "h264", seen
    assert (seen["video"].get("width"), seen["video"].get("height")) == (WIDTH, HEIGHT)
    assert seen["audio"].get("codec_name") == "aac", seen


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def display(make_config, recorder):
    """A headless libvlc display that has reported its health."""
    from appliance.media.display import VlcDisplay  # noqa: PLC0415 - libvlc only for the tests that use it

    backend = VlcDisplay(make_config(), recorder)
    backend.open()
    recorder.wait_for(lambda e: isinstance(e, HealthReport) and e.component == "display", 10)
    yield backend
    backend.close()


@pytest.fixture
def rtmp_server():
    server = RtmpServer().start()
    yield server
    server.close()


@pytest.fixture
def srt_program():
    program = SrtProgram(video=PROGRAM_VIDEO, bitrate_kbps=300).start()
    yield program
    program.stop()


@pytest.fixture
def make_config(tmp_path):
    def build(camera: dict[str, Any] | None = None, display: dict[str, Any] | None = None,
              audio: dict[str, Any] | None = None) -> Any:
        camera = {"backend": "testsrc", "width": WIDTH, "height": HEIGHT, "fps": FPS, "bitrate_kbps": 300,
                  **(camera or {})}
        display = {"backend": "vlc", "output": "headless", "width": WIDTH, "height": HEIGHT,
                   "network_caching_ms": 100, "frames_dir": str(tmp_path / "frames"), **(display or {})}
        lines = ['[site]', 'id = "kalibaru"', 'name = "Kecamatan Kalibaru"', 'kind = "kecamatan"',
                 '[broker]', 'url = "mqtt://127.0.0.1:1"', '[security]', 'allow_unsigned = true',
                 'allowed_media_hosts = ["127.0.0.1"]', '[panel]', 'backend = "mock"',
                 '[paths]', f'state_dir = "{tmp_path}/state"', f'control_socket = "{tmp_path}/control.sock"']
        # The picamera2 tests capture through ALSA: no echo canceller (that is tests/audio/).
        audio = {"echo": "off", **(audio or {})}
        for section, values in (("camera", camera), ("display", display), ("audio", audio)):
            lines.append(f"[{section}]")
            lines += [f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"'
                      for key, value in values.items()]
        path = tmp_path / "appliance.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return load([str(path)])

    return build
