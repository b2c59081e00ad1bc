"""`picamera2` camera: the Pi camera's H.264 (hardware encoder where the Pi has one) pushed by ffmpeg.

NOT YET RUN ON A RASPBERRY PI: written against picamera2's documented API (Picamera2,
create_video_configuration, H264Encoder(bitrate, repeat=True, iperiod=fps), start_recording,
custom `Output.outputframe`) and tested here with a stand-in picamera2 that feeds real H.264.

The camera and encoder run for the whole meeting; ffmpeg (the pusher, which also records the
microphone as AAC) is the part that fails and is retried, by the shared supervisor. While ffmpeg
restarts, encoded frames are dropped and the next pusher starts at a keyframe (one per second),
which carries its SPS/PPS because of `repeat=True`.

The microphone (ALSA, or a silent track when there is none) goes through the same runtime gain
as every camera (`azmq` + `volume@mic`, see uplink.py): muting never restarts the pusher.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from appliance.core.io import HealthReport
from appliance.media.microphone import microphone_filters
from appliance.media.uplink import FfmpegUplink, PermanentError, aac_args, base_args

log = logging.getLogger("appliance.picamera")


class PicameraUplink(FfmpegUplink):
    name = "picamera2"

    def __init__(self, config: Any, post: Callable[[Any], None]) -> None:
        super().__init__(config, post)
        self._camera: Any = None
        self._output: Any = None
        self._camera_lock = threading.Lock()

    def check(self) -> str | None:
        try:
            from picamera2 import Picamera2  # imported lazily: it exists only on a Pi
        except ImportError as exc:
            return f"picamera2 is not installed (apt install python3-picamera2): {exc}"
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as exc:  # noqa: BLE001 - libcamera errors have no common base class
            return f"libcamera cannot list cameras: {exc}"
        return None if cameras else "no camera is connected (check the ribbon cable)"

    def command_with(self, output: list[str], audio_filters: str = microphone_filters(False)) -> list[str]:
        s = self.settings
        # ffmpeg stamps frames as they arrive from the pipe, exactly as picamera2's FfmpegOutput does.
        # Small probe: the stream starts at a keyframe with its SPS/PPS, so ffmpeg needs no 5 s look-ahead.
        video = ["-use_wallclock_as_timestamps", "1", "-thread_queue_size", "64", "-probesize", "32768",
                 "-analyzeduration", "0", "-f", "h264", "-i", "pipe:0"]
        audio = self.microphone_input()
        if audio[:2] == ["-f", "alsa"]:  # ALSA's capture runs ~0.3 s behind the camera's wall-clock stamps
            audio[2:2] = ["-itsoffset", "-0.3"]
        return [*base_args(), *video, *audio, "-map", "0:v", "-map", "1:a", "-af", audio_filters,
                "-c:v", "copy", *aac_args(s), *output]

    def stdin(self) -> int | None:
        return subprocess.PIPE

    # --- session thread ---------------------------------------------------------------------------
    def attached(self, child: subprocess.Popen) -> None:
        with self._camera_lock:
            if self._camera is None:
                self._start_camera()
            self._output.connect(child.stdin)

    def detached(self) -> None:
        with self._camera_lock:
            if self._output is not None:
                self._output.connect(None)

    def session_ended(self) -> None:
        with self._camera_lock:
            camera, self._camera = self._camera, None
            if camera is None:
                return
            try:
                camera.stop_recording()
            except Exception:  # noqa: BLE001
                log.exception("stopping the camera failed")
            finally:
                camera.close()

    def _start_camera(self) -> None:
        try:
            from picamera2 import Picamera2
            from picamera2.encoders import H264Encoder
        except ImportError as exc:
            raise PermanentError(f"picamera2 is not installed: {exc}") from exc
        s = self.settings
        try:
            camera = Picamera2()
            camera.configure(camera.create_video_configuration(
                main={"size": (s.width, s.height), "format": "YUV420"},
                controls={"FrameRate": float(s.fps)}))
            encoder = H264Encoder(bitrate=s.bitrate_kbps * 1000, repeat=True, iperiod=s.fps)
            self._output = _output_class()()
            camera.start_recording(encoder, self._output)
        except Exception as exc:  # noqa: BLE001 - whatever libcamera raises, the camera is unusable
            self._post(HealthReport("camera", "error", f"camera did not start: {exc}"))
            raise PermanentError(f"camera did not start: {exc}") from exc
        self._camera = camera
        log.info("camera recording %dx%d@%d at %d kbit/s", s.width, s.height, s.fps, s.bitrate_kbps)


def _output_class() -> type:
    """An `Output` that writes to whichever ffmpeg is current, starting each one at a keyframe."""
    from picamera2.outputs import Output

    class PipeOutput(Output):
        def __init__(self) -> None:
            super().__init__()
            self.needs_pacing = True  # like FfmpegOutput: ffmpeg timestamps what it receives
            self._pipe: Any = None
            self._need_keyframe = True
            self._lock = threading.Lock()

        def connect(self, pipe: Any) -> None:
            with self._lock:
                self._pipe, self._need_keyframe = pipe, True

        def outputframe(self, frame: Any, keyframe: bool = True, timestamp: Any = None,
                        packet: Any = None, audio: bool = False) -> None:
            if audio:
                return
            with self._lock:
                if self._pipe is None or (self._need_keyframe and not keyframe):
                    return
                self._need_keyframe = False
                try:
                    self._pipe.write(frame)
                    self._pipe.flush()
                except (BrokenPipeError, ValueError, OSError):
                    self._pipe = None  # the pusher died; the supervisor notices and restarts it

    return PipeOutput
