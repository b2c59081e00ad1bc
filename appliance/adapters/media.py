"""The camera uplink and the screen, as the daemon sees them.

Backends report what they really do by posting events: HealthReport("camera"|"display", ...) once
opened, MediaStatus("uplink"|"program", status, detail) as streams start, stall, retry and stop.
`none` is a valid choice (a headless or screenless site) and needs no backend object at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

Post = Callable[[Any], None]


class CameraBackend(Protocol):
    def open(self) -> None: ...
    def start(self, url: str, microphone_live: bool = False) -> None: ...
    # Mute or unmute without restarting the encoder; never blocks; fails closed (see media/uplink.py).
    def set_microphone(self, live: bool) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def run_probe(self, seconds: float) -> None: ...  # self-test; posts SelftestCheckDone("camera", ...)


class DisplayBackend(Protocol):
    def open(self) -> None: ...
    def show_screen(self, screen: str, info: dict[str, Any]) -> None: ...
    def start_program(self, url: str) -> None: ...
    def stop_program(self) -> None: ...
    def duck_program(self, ducked: bool) -> None: ...  # audio.echo = duck, while the site speaks
    def close(self) -> None: ...


# Imported lazily: picamera2 and libvlc exist only where they are installed (picamera2: on a Pi).
CAMERA_BACKENDS = {"picamera2": "appliance.media.picamera:PicameraUplink",
                   "testsrc": "appliance.media.testsrc:TestsrcUplink"}
DISPLAY_BACKENDS = {"vlc": "appliance.media.display:VlcDisplay"}


class BackendUnavailable(Exception):
    pass


def _load(table: dict[str, str], name: str) -> Any:
    module_name, _, class_name = table[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} cannot be loaded: {exc}") from exc
    return getattr(module, class_name)


def create_camera(config: Any, post: Post) -> CameraBackend | None:
    name = config["camera"]["backend"]
    return None if name == "none" else _load(CAMERA_BACKENDS, name)(config, post)


def create_display(config: Any, post: Post) -> DisplayBackend | None:
    name = config["display"]["backend"]
    return None if name == "none" else _load(DISPLAY_BACKENDS, name)(config, post)
