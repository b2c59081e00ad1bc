"""Child processes that cannot outlive the daemon.

Every ffmpeg/nginx child gets its own process group (so a kill reaches whatever it spawned) and
PR_SET_PDEATHSIG=SIGKILL. PDEATHSIG fires when the *thread* that forked dies, so children must be
spawned from a thread that lives as long as they do (the supervisor thread that waits on them).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from typing import Any

_PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - every Linux has a libc
    _libc = None


def _die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def kill(proc: subprocess.Popen | None, grace_s: float = 0.0) -> None:
    """Kill the child's whole process group; optionally give it `grace_s` to end cleanly first."""
    if proc is None or proc.poll() is not None:
        return
    try:
        if grace_s > 0:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(2.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
        pass


def interrupt(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGINT (a recorder then flushes what it holds and ends), killed if it has not ended in `grace_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill(proc)


def scratch_dir() -> str | None:
    """Where short-lived media files go: /dev/shm (RAM) when there is one, else the default temp dir."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
