"""`testsrc` camera: ffmpeg's test pattern and a tone, the site's name burnt in, pushed like a real camera.

Used by `--simulate`, the demo and the tests; same codecs, GOP and URL handling as the Pi camera.
The tone is the "microphone": a continuous 440 Hz sine (-21 dBFS RMS) with a short beep each
second, through the same runtime gain (`volume@mic`, see uplink.py) as the real microphone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from appliance.media import proc, screens
from appliance.media.microphone import microphone_filters
from appliance.media.uplink import FfmpegUplink, aac_args, base_args, h264_args


class TestsrcUplink(FfmpegUplink):
    __test__ = False  # not a pytest class
    name = "testsrc"

    def __init__(self, config: Any, post: Callable[[Any], None]) -> None:
        super().__init__(config, post)
        self._workdir = tempfile.mkdtemp(prefix="appliance-testsrc-", dir=proc.scratch_dir())
        self._banner = os.path.join(self._workdir, "banner.png")

    def check(self) -> str | None:
        # ffmpeg's drawtext needs a font path; a Pillow-drawn banner works wherever Pillow does.
        screens.banner(self.site_name, self.settings.width).save(self._banner)
        return None

    def command_with(self, output: list[str], audio_filters: str = microphone_filters(False)) -> list[str]:
        s = self.settings
        if not os.path.exists(self._banner):
            self.check()
        return [
            *base_args(),
            "-re", "-f", "lavfi", "-i", f"testsrc2=size={s.width}x{s.height}:rate={s.fps}",
            *self.microphone_input(),
            "-i", self._banner,
            "-filter_complex", f"[0:v][2:v]overlay=x=0:y=main_h-overlay_h:eof_action=repeat[v];[1:a]{audio_filters}[a]",
            "-map", "[v]", "-map", "[a]",
            *h264_args(s), *aac_args(s), *output,
        ]

    def microphone_input(self) -> list[str]:
        """A tone, or (`camera.test_audio = "engine"`) the microphone a Pi would capture: the echo tests' rig."""
        if self.config["camera"]["test_audio"] == "engine":
            return super().microphone_input()
        return ["-re", "-f", "lavfi", "-i", "sine=frequency=440:beep_factor=4:sample_rate=48000"]

    def release(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)
