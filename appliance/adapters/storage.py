"""State files written so that a power cut leaves either the old or the new version, never half of one."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

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
    """Command ids already accepted, with their expiry, kept across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "accepted-commands.json"

    def load(self) -> dict[str, float]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A damaged file must not stop the site; replays stay bounded by command expiry.
            log.error("replay memory %s unreadable (%s); starting empty", self.path, exc)
            return {}
        if not isinstance(document, dict):
            log.error("replay memory %s has the wrong shape; starting empty", self.path)
            return {}
        return {key: float(value) for key, value in document.items() if isinstance(value, (int, float))}

    def save(self, entries: dict[str, float]) -> None:
        write_atomic(self.path, json.dumps(entries, sort_keys=True).encode("utf-8"))
