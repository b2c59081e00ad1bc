"""Waiting for a condition instead of sleeping for a guessed time, and for a process to end: for the demo,
the tests and the benchmarks."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, *, what: str | Callable[[], str] = "",
               interval: float = 0.05) -> T:
    """Ask `condition` every `interval` s until it returns something truthy, and return that.

    Raises TimeoutError saying `what` was awaited; a callable `what` is asked only then, so it can
    describe the last state seen. An exception from `condition` (a process that died) ends the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            raise TimeoutError(f"not within {timeout:g} s: {description or getattr(condition, '__name__', 'condition')}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
    """Send `sig` unless it has ended already, wait up to `timeout` s, then SIGKILL. Returns its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
