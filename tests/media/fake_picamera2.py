"""A stand-in for picamera2 (which cannot import off a Pi) that feeds real H.264 to the output.

It mimics only the documented calls PicameraUplink makes, records them, and plays a pre-encoded
Annex-B stream (1 s GOP, headers repeated, like H264Encoder(repeat=True, iperiod=fps)) in real time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types
from typing import Any

CALLS: list[tuple[str, Any]] = []


def encode_sample(path: str, width: int, height: int, fps: int) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={width}x{height}:rate={fps}", "-t", "3", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", str(fps), "-x264-params", "repeat-headers=1:aud=1",
                    "-f", "h264", path], check=True)


def access_units(data: bytes) -> list[tuple[bytes, bool]]:
    marker = b"\x00\x00\x00\x01\x09"
    units = [marker + part for part in data.split(marker) if part]
    return [(unit, b"\x00\x00\x01\x65" in unit or b"\x00\x00\x00\x01\x65" in unit) for unit in units]


class Output:
    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: Any = None, packet: Any = None,
                    audio: bool = False) -> None:
        pass


class H264Encoder:
    def __init__(self, bitrate: int | None = None, repeat: bool = False, iperiod: int | None = None) -> None:
        CALLS.append(("H264Encoder", {"bitrate": bitrate, "repeat": repeat, "iperiod": iperiod}))


class Picamera2:
    sample = ""
    fps = 15
    cameras: list[dict[str, Any]] = [{"Model": "imx708"}]

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return Picamera2.cameras

    def __init__(self) -> None:
        CALLS.append(("Picamera2", None))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        CALLS.append(("configure", config))

    def start_recording(self, encoder: H264Encoder, output: Output) -> None:
        CALLS.append(("start_recording", None))
        with open(Picamera2.sample, "rb") as handle:
            units = access_units(handle.read())

        def feed() -> None:
            started = time.monotonic()
            index = 0
            while not self._stop.is_set():
                unit, keyframe = units[index % len(units)]
                output.outputframe(unit, keyframe, int((time.monotonic() - started) * 1e6))
                index += 1
                self._stop.wait(max(0.0, started + index / Picamera2.fps - time.monotonic()))

        self._thread = threading.Thread(target=feed, daemon=True)
        self._thread.start()

    def stop_recording(self) -> None:
        CALLS.append(("stop_recording", None))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def close(self) -> None:
        CALLS.append(("close", None))


def install(monkeypatch: Any) -> None:
    package = types.ModuleType("picamera2")
    package.Picamera2 = Picamera2
    encoders = types.ModuleType("picamera2.encoders")
    encoders.H264Encoder = H264Encoder
    outputs = types.ModuleType("picamera2.outputs")
    outputs.Output = Output
    for name, module in (("picamera2", package), ("picamera2.encoders", encoders), ("picamera2.outputs", outputs)):
        monkeypatch.setitem(sys.modules, name, module)
    CALLS.clear()
