"""Headless output: libvlc decodes into our memory (frame callbacks) instead of a screen.

Used by `display.output = "headless"` (tests, the demo, `--simulate`). The callbacks run on VLC's
video thread and only copy bookkeeping; nothing here calls libvlc from inside them. VLC redraws the
last picture about 12 times a second even when nothing new arrives, so "a new frame" is told apart
by a checksum of the picture, not by counting callbacks (crc32 of a 720p frame: ~1 ms).
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from PIL import Image


class FrameSink:
    def __init__(self, size: tuple[int, int], frames_dir: str = "") -> None:
        self.width, self.height = size
        self.pitch = self.width * 4
        self.buffer = (ctypes.c_ubyte * (self.pitch * self.height))()
        self._address = ctypes.addressof(self.buffer)
        self.frames_dir = frames_dir
        self.callbacks = 0          # every display callback, redraws included
        self.frames = 0             # distinct pictures
        self.last_frame_at = 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=256)  # arrival times of new frames
        self._fingerprint = -1
        self._lock = threading.Lock()
        self.listeners: list[Callable[[memoryview, float], None]] = []
        self._snapshot_frames = -1
        # ctypes callbacks must stay referenced for as long as VLC may call them.
        import vlc

        self._callbacks = (vlc.CallbackDecorators.VideoLockCb(self._on_lock),
                           vlc.CallbackDecorators.VideoUnlockCb(self._on_unlock),
                           vlc.CallbackDecorators.VideoDisplayCb(self._on_display))
        if frames_dir:
            os.makedirs(frames_dir, exist_ok=True)

    def attach(self, player: Any) -> None:
        player.video_set_callbacks(*self._callbacks, None)
        player.video_set_format("RV32", self.width, self.height, self.pitch)

    # --- VLC's video thread -------------------------------------------------------------------------
    def _on_lock(self, opaque: Any, planes: Any) -> None:
        planes[0] = self._address
        return None

    def _on_unlock(self, opaque: Any, picture: Any, planes: Any) -> None:
        return None

    def _on_display(self, opaque: Any, picture: Any) -> None:
        now = time.monotonic()
        view = memoryview(self.buffer).cast("B")
        fingerprint = zlib.crc32(view)
        with self._lock:
            self.callbacks += 1
            if fingerprint == self._fingerprint:
                return
            self._fingerprint = fingerprint
            self.frames += 1
            self.last_frame_at = now
            self.recent.append(now)
        for listener in self.listeners:
            listener(view, now)

    # --- anyone ------------------------------------------------------------------------------------
    def frames_since(self, moment: float) -> int:
        with self._lock:
            return self.frames if self.last_frame_at >= moment else 0

    def first_frame_since(self, moment: float) -> float:
        """When the first new picture at or after `moment` arrived (0.0 if none is remembered)."""
        with self._lock:
            return next((at for at in self.recent if at >= moment), 0.0)

    def picture(self) -> Image.Image:
        """A copy of what is on the (virtual) glass now, as RGB."""
        return Image.frombuffer("RGBA", (self.width, self.height), bytes(self.buffer), "raw", "BGRA", 0, 1).convert("RGB")

    def snapshot(self, label: str = "") -> str | None:
        """Write the current picture to frames_dir/display.jpg, and to `label`.jpg, for people to open."""
        if not self.frames_dir or self.frames == self._snapshot_frames:
            return None
        self._snapshot_frames = self.frames
        image = self.picture()
        path = os.path.join(self.frames_dir, "display.jpg")
        for target in ([path, os.path.join(self.frames_dir, f"{label}.jpg")] if label else [path]):
            image.save(target + ".tmp.jpg", quality=85)
            os.replace(target + ".tmp.jpg", target)  # a viewer never opens a half-written file
        return path
